// Command firstlog measures the time from POST /build/trigger to the first
// log line arriving over the API's log stream, over several builds.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/client"
)

type firstLine struct {
	io.Writer
	at   time.Time
	seen bool
}

func (f *firstLine) Write(p []byte) (int, error) {
	if !f.seen {
		f.at, f.seen = time.Now(), true
	}
	return len(p), nil
}

func main() {
	server := flag.String("server", "http://127.0.0.1:8000", "server URL")
	repo := flag.String("repo", "demo", "repository to trigger")
	n := flag.Int("n", 10, "builds to measure")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := client.New(*server)
	var lat []time.Duration
	for i := 0; i < *n; i++ {
		start := time.Now()
		r, err := c.Trigger(ctx, *repo)
		if err != nil {
			fmt.Fprintln(os.Stderr, "firstlog:", err)
			os.Exit(1)
		}
		if r.Status != "triggered" {
			fmt.Fprintln(os.Stderr, "firstlog: a build is already running; wait for it and retry")
			os.Exit(1)
		}
		fl := &firstLine{}
		if status, err := c.Follow(ctx, r.BuildID, fl); err != nil || status == "" {
			fmt.Fprintln(os.Stderr, "firstlog: follow:", err)
			os.Exit(1)
		}
		lat = append(lat, fl.at.Sub(start))
	}
	slices.Sort(lat)
	fmt.Printf("trigger -> first log line over %d builds: min %s  median %s  max %s\n",
		len(lat), lat[0].Round(time.Microsecond), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
}
