package worker

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// fakeExec is a unit test's executor: each job blocks until released
// (when its attr is in block), then fails when its attr is "bad".
type fakeExec struct {
	mu      sync.Mutex
	started map[int64][]string // job → workers that ran it
	block   map[string]chan struct{}
	stopped map[int64]error // job → cause its context ended with
}

func newFakeExec(block ...string) *fakeExec {
	f := &fakeExec{started: map[int64][]string{}, block: map[string]chan struct{}{}, stopped: map[int64]error{}}
	for _, b := range block {
		f.block[b] = make(chan struct{})
	}
	return f
}

func (f *fakeExec) RunJob(ctx context.Context, worker string, j *db.Job) error {
	f.mu.Lock()
	f.started[j.ID] = append(f.started[j.ID], worker)
	ch := f.block[j.Attr]
	f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			f.mu.Lock()
			f.stopped[j.ID] = context.Cause(ctx)
			f.mu.Unlock()
			return context.Cause(ctx)
		}
	}
	if j.Attr == "bad" {
		return errors.New("bad fails")
	}
	return nil
}

func (f *fakeExec) runs(id int64) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.started[id]...)
}

// eachDB runs f as a subtest on a new SQLite database and a new
// PostgreSQL one.
func eachDB(t *testing.T, f func(t *testing.T, d *db.DB)) {
	for _, dialect := range []db.Dialect{db.SQLite, db.Postgres} {
		t.Run(string(dialect), func(t *testing.T) {
			dsn := filepath.Join(t.TempDir(), "state.db")
			if dialect == db.Postgres {
				dsn = pgtest.NewDatabase(t)
			}
			d, err := db.Open(t.Context(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := d.Close(); err != nil {
					t.Error(err)
				}
			})
			f(t, d)
		})
	}
}

func queue(t *testing.T, d *db.DB, attrs ...string) (int64, []int64) {
	t.Helper()
	b, _, err := d.CreateBuild(t.Context(), "r", "api", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var jobs []db.NewJob
	for _, a := range attrs {
		jobs = append(jobs, db.NewJob{BuildID: b.ID, Kind: db.JobAttr, Attr: a, System: "x86_64-linux"})
	}
	ids, err := d.EnqueueJobs(t.Context(), jobs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return b.ID, ids
}

// waitFor polls cond until it holds, or fails the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func jobState(t *testing.T, d *db.DB, id int64) *db.Job {
	t.Helper()
	j, err := d.Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

type started struct {
	w            *Worker
	drain, kill  context.CancelFunc
	done         chan error
	mu           sync.Mutex
	endsRecorded []int64
}

func start(t *testing.T, d *db.DB, exec Executor, name string, lease time.Duration) *started {
	t.Helper()
	s := &started{done: make(chan error, 1)}
	s.w = New(Config{DB: d, Executor: exec, Name: name, Host: "h", Systems: []string{"x86_64-linux"}, Capacity: 2, Version: "test",
		Lease: lease, Poll: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		OnJobEnd: func(j *db.Job) { s.mu.Lock(); s.endsRecorded = append(s.endsRecorded, j.ID); s.mu.Unlock() }})
	kill, killCancel := context.WithCancel(context.Background())
	drain, drainCancel := context.WithCancel(kill)
	s.drain, s.kill = drainCancel, killCancel
	go func() { s.done <- s.w.Run(drain, kill) }()
	t.Cleanup(func() {
		killCancel()
		if err := <-s.done; err != nil {
			t.Errorf("worker %s: %v", name, err)
		}
	})
	return s
}

// TestRunsJobs: a worker runs every job once and records each outcome.
func TestRunsJobs(t *testing.T) { eachDB(t, testRunsJobs) }

func testRunsJobs(t *testing.T, d *db.DB) {
	_, ids := queue(t, d, "a", "bad", "c")
	exec := newFakeExec()
	s := start(t, d, exec, "w1", time.Minute)
	for _, id := range ids {
		waitFor(t, "the jobs to end", func() bool { return jobState(t, d, id).State.Done() })
	}
	want := []db.JobState{db.JobSucceeded, db.JobFailed, db.JobSucceeded}
	for i, id := range ids {
		j := jobState(t, d, id)
		if j.State != want[i] || j.Worker != "w1" || len(exec.runs(id)) != 1 {
			t.Errorf("job %d = %+v, runs %v; want %s by w1 once", id, j, exec.runs(id), want[i])
		}
	}
	if j := jobState(t, d, ids[1]); j.Error != "bad fails" {
		t.Errorf("failed job's error = %q", j.Error)
	}
	ws, err := d.Workers(t.Context())
	if err != nil || len(ws) != 1 || ws[0].Name != "w1" || ws[0].Capacity != 2 {
		t.Errorf("workers = %+v, %v", ws, err)
	}
	s.drain()
	if err := <-s.done; err != nil {
		t.Errorf("Run = %v", err)
	}
	s.done <- nil // for the cleanup
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.endsRecorded) != 3 {
		t.Errorf("OnJobEnd called for %v, want the 3 jobs", s.endsRecorded)
	}
}

// TestCancelStopsJob: a job cancelled in the database stops on its worker
// at the next renewal and stays cancelled.
func TestCancelStopsJob(t *testing.T) { eachDB(t, testCancelStopsJob) }

func testCancelStopsJob(t *testing.T, d *db.DB) {
	bid, ids := queue(t, d, "slow")
	exec := newFakeExec("slow")
	start(t, d, exec, "w1", 300*time.Millisecond)
	waitFor(t, "the job to start", func() bool { return len(exec.runs(ids[0])) == 1 })
	if _, err := d.CancelJobs(t.Context(), bid, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the job to stop", func() bool {
		exec.mu.Lock()
		defer exec.mu.Unlock()
		return exec.stopped[ids[0]] != nil
	})
	exec.mu.Lock()
	cause := exec.stopped[ids[0]]
	exec.mu.Unlock()
	if !errors.Is(cause, ErrCancelled) {
		t.Errorf("job stopped by %v, want ErrCancelled", cause)
	}
	if j := jobState(t, d, ids[0]); j.State != db.JobCancelled {
		t.Errorf("job = %+v, want cancelled", j)
	}
}

// TestDrain: a draining worker claims nothing new and lets its running
// jobs finish and be recorded.
func TestDrain(t *testing.T) { eachDB(t, testDrain) }

func testDrain(t *testing.T, d *db.DB) {
	_, ids := queue(t, d, "slow")
	exec := newFakeExec("slow")
	s := start(t, d, exec, "w1", time.Minute)
	waitFor(t, "the job to start", func() bool { return len(exec.runs(ids[0])) == 1 })
	s.drain()
	waitFor(t, "the worker to say it drains", func() bool {
		ws, _ := d.Workers(t.Context())
		return len(ws) == 1 && ws[0].Draining
	})
	_, later := queue(t, d, "later")
	close(exec.block["slow"])
	if err := <-s.done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	s.done <- nil
	if j := jobState(t, d, ids[0]); j.State != db.JobSucceeded {
		t.Errorf("running job after drain = %+v, want succeeded", j)
	}
	if j := jobState(t, d, later[0]); j.State != db.JobQueued || len(exec.runs(later[0])) != 0 {
		t.Errorf("job queued during drain = %+v, want left queued", j)
	}
}

// TestLostWorker: a worker killed mid-job leaves the job running under a
// lease; when it expires another worker runs the job, and the end is
// recorded once, by it.
func TestLostWorker(t *testing.T) { eachDB(t, testLostWorker) }

func testLostWorker(t *testing.T, d *db.DB) {
	_, ids := queue(t, d, "slow")
	exec := newFakeExec("slow")
	const lease = 300 * time.Millisecond
	first := start(t, d, exec, "w1", lease)
	waitFor(t, "the job to start on w1", func() bool { return len(exec.runs(ids[0])) == 1 })
	first.kill()
	if err := <-first.done; err != nil {
		t.Fatalf("killed worker: %v", err)
	}
	first.done <- nil
	if j := jobState(t, d, ids[0]); j.State != db.JobRunning || j.Worker != "w1" {
		t.Fatalf("job of the killed worker = %+v, want still running on w1 until its lease expires", j)
	}
	close(exec.block["slow"])
	second := start(t, d, exec, "w2", lease)
	waitFor(t, "the job to end", func() bool { return jobState(t, d, ids[0]).State.Done() })
	j := jobState(t, d, ids[0])
	if j.State != db.JobSucceeded || j.Worker != "w2" || j.Attempts != 2 {
		t.Errorf("job = %+v, want succeeded on w2, attempt 2", j)
	}
	if runs := exec.runs(ids[0]); len(runs) != 2 || runs[0] != "w1" || runs[1] != "w2" {
		t.Errorf("runs = %v, want w1 then w2", runs)
	}
	second.mu.Lock()
	defer second.mu.Unlock()
	if len(second.endsRecorded) != 1 {
		t.Errorf("ends recorded by w2: %v, want one", second.endsRecorded)
	}
}

// TestRestartRequeues: a worker starting under the name of one that died
// takes its jobs back at once.
func TestRestartRequeues(t *testing.T) { eachDB(t, testRestartRequeues) }

func testRestartRequeues(t *testing.T, d *db.DB) {
	_, ids := queue(t, d, "a")
	if _, err := d.ClaimJob(t.Context(), "w1", []string{"x86_64-linux"}, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	exec := newFakeExec()
	start(t, d, exec, "w1", time.Hour)
	waitFor(t, "the job to end", func() bool { return jobState(t, d, ids[0]).State.Done() })
	if j := jobState(t, d, ids[0]); j.State != db.JobSucceeded || len(exec.runs(ids[0])) != 1 {
		t.Errorf("job = %+v, runs %v", j, exec.runs(ids[0]))
	}
}
