package hostname

import (
	"context"
	"errors"
	"testing"
)

func TestFQDN(t *testing.T) {
	for _, tt := range []struct {
		name, host string
		hostErr    error
		cname      string
		cnameErr   error
		want       string
	}{
		{"canonical name from DNS", "forge", nil, "forge.example.com.", nil, "forge.example.com"},
		{"lookup fails", "forge", nil, "", errors.New("no such host"), "forge"},
		{"canonical name is the bare name", "forge", nil, "forge.", nil, "forge"},
		{"canonical name is another host", "forge", nil, "cdn.example.net.", nil, "forge"},
		{"already qualified", "forge.example.org", nil, "", errors.New("must not be asked"), "forge.example.org"},
		{"no host name", "", errors.New("uname failed"), "", nil, "localhost"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := fqdn(context.Background(),
				func() (string, error) { return tt.host, tt.hostErr },
				func(_ context.Context, h string) (string, error) {
					if h != tt.host {
						t.Errorf("looked up %q, want %q", h, tt.host)
					}
					return tt.cname, tt.cnameErr
				})
			if got != tt.want {
				t.Errorf("FQDN = %q, want %q", got, tt.want)
			}
		})
	}
}
