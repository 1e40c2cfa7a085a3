package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/crystal-forge/crystal-forge/internal/keygen"
)

// runServer is the all-in-one server. For now it is the key manager
// followed by the binary cache; the build server joins it later.
func runServer(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname := fs.String("hostname", envOr("BUILD_SERVER_HOSTNAME", "build-server"), "server hostname; also the signing key's name (env BUILD_SERVER_HOSTNAME)")
	cachePort := fs.Int("cache-port", envInt("BUILD_SERVER_CACHE_PORT", 5000), "binary cache port (env BUILD_SERVER_CACHE_PORT)")
	bind := fs.String("bind", "::", "address to bind the ports to")
	owner := fs.String("key-owner", "", "user:group to own a newly created key")
	var cf cacheFlags
	cf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(cf.keyFiles) == 0 {
		cf.keyFiles = stringList{keygen.DefaultKeyFile}
	}
	// The first key is the one the server creates when it is missing.
	res, err := keygen.Ensure(keygen.Options{KeyFile: cf.keyFiles[0], Name: *hostname, Owner: *owner, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res.Key.Public().String())
	srv, closeStore, err := cf.open(ctx, log)
	if err != nil {
		return err
	}
	defer closeStore()
	return serve(ctx, log, "cache", net.JoinHostPort(*bind, strconv.Itoa(*cachePort)), srv)
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > 65535 {
		fmt.Fprintf(os.Stderr, "crystal-forge: %s=%q is not a port number; using %d\n", key, v, def)
		return def
	}
	return n
}
