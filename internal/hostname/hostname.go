// Package hostname finds the name other machines know this one by, for the
// URLs the server hands out.
package hostname

import (
	"context"
	"net"
	"os"
	"strings"
	"time"
)

// lookupTimeout bounds the DNS query: an offline machine must still start.
const lookupTimeout = 2 * time.Second

// FQDN returns this machine's fully qualified name, like `hostname -f`:
// os.Hostname, then the canonical name DNS (or /etc/hosts) gives for it,
// falling back to the bare host name when there is none.
func FQDN(ctx context.Context) string {
	return fqdn(ctx, os.Hostname, net.DefaultResolver.LookupCNAME)
}

func fqdn(ctx context.Context, hostname func() (string, error), cname func(context.Context, string) (string, error)) string {
	h, err := hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	if strings.Contains(h, ".") {
		return h
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	c, err := cname(ctx, h)
	c = strings.TrimSuffix(c, ".")
	// A canonical name that is not a longer form of ours (a CDN, a
	// search-domain accident) would not reach this machine.
	if err != nil || !strings.HasPrefix(c, h+".") {
		return h
	}
	return c
}
