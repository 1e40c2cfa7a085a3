package tailnet

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
)

// Forward accepts connections on ln (a local port) and relays each to
// target over the tailnet, until ctx ends or ln is closed. It lets a
// program that cannot use tsnet (nix copying from the cache) reach a
// tailnet address through 127.0.0.1.
func Forward(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			up, err := dial(ctx)
			if err != nil {
				log.Warn("tailnet forward: dial failed", "err", err)
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			relay := func(dst, src net.Conn) {
				// A copy ends when either side closes or fails; both are
				// the end of this connection, nothing to report.
				_, _ = io.Copy(dst, src)
				// Half-close so the other side sees the end of the request.
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
				done <- struct{}{}
			}
			go relay(up, c)
			go relay(c, up)
			select {
			case <-done:
				<-done
			case <-ctx.Done():
			}
		})
	}
}

// ForwardLocal listens on 127.0.0.1 (a free port) and forwards to target
// over the node; it returns the local address and stops with ctx.
func (n *Node) ForwardLocal(ctx context.Context, target string, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		if err := Forward(ctx, ln, func(ctx context.Context) (net.Conn, error) { return n.Dial(ctx, target) }, log); err != nil {
			log.Error("tailnet forward stopped", "target", target, "err", err)
		}
	}()
	return ln.Addr().String(), nil
}
