// Command claimload measures the build queue: how long a claim takes, and
// how long a job waits between queued and running, with several workers
// sharing one database.
//
//	go run ./bench/claimload [--jobs 500] [--workers 3] [--db DSN]
//
// Two runs on one database: a backlog (all jobs queued, then the workers
// claim and finish them as fast as they can: claim latency and
// throughput), and arrivals (the workers, the real worker loop with its
// default 1 s poll and, on PostgreSQL, LISTEN/NOTIFY, idle; jobs queued one
// at a time every --gap: the wait from queued to running a job sees on an
// idle cluster).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/worker"
)

func main() {
	jobs := flag.Int("jobs", 500, "jobs per run")
	workers := flag.Int("workers", 3, "workers")
	dsn := flag.String("db", "", "database (default: a new SQLite file in a temporary directory)")
	gap := flag.Duration("gap", 20*time.Millisecond, "time between arrivals in the second run")
	flag.Parse()
	if err := run(*dsn, *jobs, *workers, *gap); err != nil {
		fmt.Fprintln(os.Stderr, "claimload:", err)
		os.Exit(1)
	}
}

func pct(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func run(dsn string, n, workers int, gap time.Duration) error {
	ctx := context.Background()
	if dsn == "" {
		dir, err := os.MkdirTemp("", "claimload-")
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(dir) }()
		dsn = filepath.Join(dir, "state.db")
	}
	d, err := db.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	newBuild := func(repo string) (int64, error) {
		b, _, err := d.CreateBuild(ctx, fmt.Sprintf("%s-%d", repo, time.Now().UnixNano()), "bench", os.TempDir())
		if err != nil {
			return 0, err
		}
		return b.ID, nil
	}

	// Run 1: a backlog.
	bid, err := newBuild("backlog")
	if err != nil {
		return err
	}
	batch := make([]db.NewJob, n)
	for i := range batch {
		batch[i] = db.NewJob{BuildID: bid, Kind: db.JobAttr, Attr: fmt.Sprintf("p%d", i), System: "x86_64-linux"}
	}
	if _, err := d.EnqueueJobs(ctx, batch, time.Now()); err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		claims []time.Duration
		wg     sync.WaitGroup
		errs   []error
	)
	start := time.Now()
	for w := range workers {
		name := fmt.Sprintf("w%d", w)
		wg.Go(func() {
			for {
				t := time.Now()
				j, err := d.ClaimJob(ctx, name, []string{"x86_64-linux"}, time.Minute, t)
				took := time.Since(t)
				if err == db.ErrNoJob {
					return
				}
				if err == nil {
					err = d.FinishJob(ctx, db.JobFinish{ID: j.ID, Worker: name, State: db.JobSucceeded, At: time.Now()})
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				claims = append(claims, took)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(errs) > 0 {
		return errs[0]
	}
	fmt.Printf("backlog: %d jobs, %d workers: %d claimed in %s (%.0f claim+finish/s); claim p50 %s, p99 %s\n",
		n, workers, len(claims), elapsed.Round(time.Millisecond), float64(len(claims))/elapsed.Seconds(), ms(pct(claims, .5)), ms(pct(claims, .99)))

	// Run 2: arrivals at idle workers (the real loop).
	bid, err = newBuild("arrivals")
	if err != nil {
		return err
	}
	wctx, stop := context.WithCancel(ctx)
	var ws sync.WaitGroup
	for w := range workers {
		wk := worker.New(worker.Config{DB: d, Executor: noop{}, Name: fmt.Sprintf("a%d", w), Systems: []string{"x86_64-linux"},
			Logger: slog.New(slog.DiscardHandler)})
		ws.Go(func() {
			if err := wk.Run(wctx, wctx); err != nil {
				fmt.Fprintln(os.Stderr, "worker:", err)
			}
		})
	}
	for i := range n {
		if _, err := d.EnqueueJobs(ctx, []db.NewJob{{BuildID: bid, Kind: db.JobAttr, Attr: fmt.Sprintf("q%d", i), System: "x86_64-linux"}}, time.Now()); err != nil {
			stop()
			return err
		}
		time.Sleep(gap)
	}
	var waits []time.Duration
	for {
		js, err := d.BuildJobs(ctx, bid)
		if err != nil {
			stop()
			return err
		}
		waits = waits[:0]
		for _, j := range js {
			if j.StartedAt != nil {
				waits = append(waits, j.StartedAt.Sub(j.CreatedAt))
			}
		}
		if len(waits) == n {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	ws.Wait()
	how := "1 s poll"
	if d.Dialect() == db.Postgres {
		how = "woken by LISTEN/NOTIFY, 1 s poll"
	}
	fmt.Printf("arrivals: %d jobs, one every %s, %d idle workers (%s): queued → running p50 %s, p99 %s\n",
		n, gap, workers, how, ms(pct(waits, .5)), ms(pct(waits, .99)))
	return nil
}

type noop struct{}

func (noop) RunJob(context.Context, string, *db.Job) error { return nil }
