package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/crystal-forge/crystal-forge/internal/keygen"
)

func runKeygen(args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	keyFile := fs.String("key-file", keygen.DefaultKeyFile, "secret key file")
	name := fs.String("name", host, "key name (clients see it in trusted-public-keys)")
	owner := fs.String("owner", "", "user:group to own a newly created key file")
	if err := parse(fs, args); err != nil {
		return err
	}
	res, err := keygen.Ensure(keygen.Options{KeyFile: *keyFile, Name: *name, Owner: *owner, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res.Key.Public().String())
	return nil
}
