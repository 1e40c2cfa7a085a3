package main

import (
	"io"
	"log/slog"
)

// closeLogged closes c at the end of a command, logging a failure: by then
// the command's result is decided, and the log is where an operator looks.
func closeLogged(log *slog.Logger, what string, c io.Closer) {
	if err := c.Close(); err != nil {
		log.Error("close "+what, "err", err)
	}
}
