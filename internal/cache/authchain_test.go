package cache

import (
	"context"
	"errors"
	"testing"
)

type fixedAuth struct {
	name string
	ok   bool
	err  error
}

func (f fixedAuth) AuthenticateUpload(context.Context, string) (string, bool, error) {
	return f.name, f.ok, f.err
}

func TestAnyAuthenticator(t *testing.T) {
	boom := errors.New("database down")
	for _, tc := range []struct {
		a    AnyAuthenticator
		name string
		ok   bool
		err  error
	}{
		{AnyAuthenticator{fixedAuth{}, fixedAuth{name: "ci", ok: true}}, "ci", true, nil},
		{AnyAuthenticator{fixedAuth{name: "api", ok: true}, fixedAuth{name: "file", ok: true}}, "api", true, nil},
		{AnyAuthenticator{fixedAuth{err: boom}, fixedAuth{name: "file", ok: true}}, "", false, boom},
		{AnyAuthenticator{fixedAuth{}, fixedAuth{}}, "", false, nil},
		{nil, "", false, nil},
	} {
		name, ok, err := tc.a.AuthenticateUpload(context.Background(), "t")
		if name != tc.name || ok != tc.ok || !errors.Is(err, tc.err) {
			t.Errorf("%v: %q, %v, %v; want %q, %v, %v", tc.a, name, ok, err, tc.name, tc.ok, tc.err)
		}
	}
}
