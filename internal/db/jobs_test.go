package db

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is the tests' clock: leases are compared with times the test passes,
// never with the wall clock.
var t0 = time.UnixMilli(1_800_000_000_000).UTC()

func newBuildWithJobs(t *testing.T, d *DB, repo string, jobs ...NewJob) (int64, []int64) {
	t.Helper()
	b, _, err := d.CreateBuild(t.Context(), repo, "api", "/l/"+repo)
	if err != nil {
		t.Fatal(err)
	}
	for i := range jobs {
		jobs[i].BuildID = b.ID
	}
	ids, err := d.EnqueueJobs(t.Context(), jobs, t0)
	if err != nil {
		t.Fatal(err)
	}
	return b.ID, ids
}

func claim(t *testing.T, d *DB, worker string, systems []string, at time.Time) *Job {
	t.Helper()
	j, err := d.ClaimJob(t.Context(), worker, systems, time.Minute, at)
	if err != nil {
		t.Fatalf("%s claims: %v", worker, err)
	}
	return j
}

func TestClaimJob(t *testing.T) { forEachDB(t, testClaimJob) }

func testClaimJob(t *testing.T, d *DB) {
	ctx := t.Context()
	_, ids := newBuildWithJobs(t, d, "r",
		NewJob{Kind: JobEval},
		NewJob{Kind: JobAttr, Attr: "hello", AttrKind: "package", System: "x86_64-linux", DrvPath: "/nix/store/a-hello.drv"},
		NewJob{Kind: JobAttr, Attr: "arm", AttrKind: "package", System: "aarch64-linux"},
	)
	first := claim(t, d, "w1", []string{"x86_64-linux"}, t0)
	if first.ID != ids[0] || first.Kind != JobEval || first.State != JobRunning || first.Worker != "w1" || first.Attempts != 1 ||
		first.StartedAt == nil || !first.StartedAt.Equal(t0) || first.LeaseExpiresAt == nil || !first.LeaseExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("first claim = %+v, want job %d running on w1 until %v", first, ids[0], t0.Add(time.Minute))
	}
	second := claim(t, d, "w2", []string{"x86_64-linux"}, t0)
	if second.ID != ids[1] || second.Attr != "hello" || second.AttrKind != "package" || second.DrvPath != "/nix/store/a-hello.drv" {
		t.Fatalf("second claim = %+v, want job %d", second, ids[1])
	}
	if j, err := d.ClaimJob(ctx, "w1", []string{"x86_64-linux"}, time.Minute, t0); !errors.Is(err, ErrNoJob) {
		t.Fatalf("claim with only an aarch64 job queued = %+v, %v; want ErrNoJob", j, err)
	}
	if j, err := d.ClaimJob(ctx, "w3", nil, time.Minute, t0); !errors.Is(err, ErrNoJob) {
		t.Fatalf("claim by a worker of no system = %+v, %v; want ErrNoJob", j, err)
	}
	arm := claim(t, d, "w3", []string{"riscv64-linux", "aarch64-linux"}, t0)
	if arm.ID != ids[2] {
		t.Fatalf("aarch64 worker claimed %+v, want job %d", arm, ids[2])
	}
	if q, r, err := d.QueueCounts(ctx); err != nil || q != 0 || r != 3 {
		t.Errorf("QueueCounts = %d queued, %d running, %v; want 0, 3", q, r, err)
	}
}

// TestClaimConcurrent: workers claiming at once take every job exactly once.
func TestClaimConcurrent(t *testing.T) { forEachDB(t, testClaimConcurrent) }

func testClaimConcurrent(t *testing.T, d *DB) {
	const n, workers = 60, 6
	jobs := make([]NewJob, n)
	for i := range jobs {
		jobs[i] = NewJob{Kind: JobAttr, Attr: "p", System: "x86_64-linux"}
	}
	_, ids := newBuildWithJobs(t, d, "r", jobs...)
	var (
		mu      sync.Mutex
		claimed = map[int64]string{}
		wg      sync.WaitGroup
	)
	for w := range workers {
		name := string(rune('a' + w))
		wg.Go(func() {
			for {
				j, err := d.ClaimJob(context.Background(), name, []string{"x86_64-linux"}, time.Minute, t0)
				if errors.Is(err, ErrNoJob) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if prev, dup := claimed[j.ID]; dup {
					t.Errorf("job %d claimed by %s and %s", j.ID, prev, name)
				}
				claimed[j.ID] = name
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(claimed) != n {
		t.Fatalf("%d of %d jobs claimed", len(claimed), n)
	}
	for _, id := range ids {
		if _, ok := claimed[id]; !ok {
			t.Errorf("job %d never claimed", id)
		}
	}
}

// TestLeaseExpiry: a renewed lease keeps the job; an expired one sends it
// back to the queue, its worker can neither renew nor finish it, another
// worker takes it, and a job lost max_attempts times fails.
func TestLeaseExpiry(t *testing.T) { forEachDB(t, testLeaseExpiry) }

func testLeaseExpiry(t *testing.T, d *DB) {
	ctx := t.Context()
	_, ids := newBuildWithJobs(t, d, "r", NewJob{Kind: JobAttr, Attr: "p", MaxAttempts: 2})
	j := claim(t, d, "w1", nil, t0)
	if err := d.RenewLease(ctx, j.ID, "w1", time.Minute, t0.Add(50*time.Second)); err != nil {
		t.Fatalf("renew: %v", err)
	}
	// Past the first lease, within the renewed one: nothing to reclaim.
	if rq, fl, err := d.ReclaimExpired(ctx, t0.Add(90*time.Second)); err != nil || len(rq)+len(fl) != 0 {
		t.Fatalf("reclaim within the renewed lease = %v, %v, %v; want nothing", rq, fl, err)
	}
	if err := d.RenewLease(ctx, j.ID, "w2", time.Minute, t0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("renewal by a worker that does not hold the job: %v, want ErrLeaseLost", err)
	}

	rq, fl, err := d.ReclaimExpired(ctx, t0.Add(111*time.Second))
	if err != nil || len(rq) != 1 || len(fl) != 0 || rq[0].ID != ids[0] || rq[0].State != JobQueued || rq[0].Worker != "" ||
		!strings.Contains(rq[0].Error, "w1 was lost") {
		t.Fatalf("reclaim after expiry = %+v, %+v, %v; want job %d queued again", rq, fl, err, ids[0])
	}
	if err := d.RenewLease(ctx, j.ID, "w1", time.Minute, t0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("renewal by the lost worker: %v, want ErrLeaseLost", err)
	}
	if err := d.FinishJob(ctx, JobFinish{ID: j.ID, Worker: "w1", State: JobSucceeded, At: t0}); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("finish by the lost worker: %v, want ErrLeaseLost", err)
	}

	again := claim(t, d, "w2", nil, t0.Add(2*time.Minute))
	if again.ID != j.ID || again.Attempts != 2 || again.Worker != "w2" || again.Error != "" {
		t.Fatalf("second claim = %+v, want job %d on w2, attempt 2", again, j.ID)
	}
	// Lost on its last attempt: the job fails, it does not go round again.
	rq, fl, err = d.ReclaimExpired(ctx, t0.Add(10*time.Minute))
	if err != nil || len(rq) != 0 || len(fl) != 1 || fl[0].State != JobFailed || fl[0].FinishedAt == nil ||
		!strings.Contains(fl[0].Error, "attempt 2 of 2") {
		t.Fatalf("reclaim on the last attempt = %+v, %+v, %v; want the job failed", rq, fl, err)
	}
	if _, err := d.ClaimJob(ctx, "w3", nil, time.Minute, t0.Add(10*time.Minute)); !errors.Is(err, ErrNoJob) {
		t.Errorf("claim after the job failed: %v, want ErrNoJob", err)
	}
	if err := d.FinishJob(ctx, JobFinish{ID: j.ID, Worker: "w2", State: JobSucceeded, At: t0}); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("finish of a failed job: %v, want ErrLeaseLost", err)
	}
}

// TestFinishJobOnce: of any number of finishes of one claim, one lands.
func TestFinishJobOnce(t *testing.T) { forEachDB(t, testFinishJobOnce) }

func testFinishJobOnce(t *testing.T, d *DB) {
	ctx := t.Context()
	newBuildWithJobs(t, d, "r", NewJob{Kind: JobAttr, Attr: "p"})
	j := claim(t, d, "w1", nil, t0)
	if err := d.FinishJob(ctx, JobFinish{ID: j.ID, Worker: "w1", State: JobRunning, At: t0}); err == nil {
		t.Error("finish into state running accepted")
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		landed int
	)
	for range 8 {
		wg.Go(func() {
			err := d.FinishJob(context.Background(), JobFinish{ID: j.ID, Worker: "w1", State: JobFailed, Error: "boom", At: t0.Add(time.Second)})
			switch {
			case err == nil:
				mu.Lock()
				landed++
				mu.Unlock()
			case !errors.Is(err, ErrLeaseLost):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if landed != 1 {
		t.Fatalf("%d finishes landed, want 1", landed)
	}
	got, err := d.Job(ctx, j.ID)
	if err != nil || got.State != JobFailed || got.Error != "boom" || got.FinishedAt == nil || !got.FinishedAt.Equal(t0.Add(time.Second)) || got.LeaseExpiresAt != nil {
		t.Fatalf("finished job = %+v, %v", got, err)
	}
	if _, err := d.Job(ctx, j.ID+100); !errors.Is(err, ErrNotFound) {
		t.Errorf("Job of an unknown id: %v, want ErrNotFound", err)
	}
}

// TestJobResultsFollowTheLease: what a lost attempt recorded is dropped
// when its job is queued again, the lost worker cannot record an outcome,
// and the next attempt records the attribute once.
func TestJobResultsFollowTheLease(t *testing.T) { forEachDB(t, testJobResultsFollowTheLease) }

func testJobResultsFollowTheLease(t *testing.T, d *DB) {
	ctx := t.Context()
	bid, _ := newBuildWithJobs(t, d, "r", NewJob{Kind: JobAttr, Attr: "p", AttrKind: "package"})
	j := claim(t, d, "w1", nil, t0)
	lost, err := d.StartJobResult(ctx, bid, j.ID, "p", "package", t0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.ReclaimExpired(ctx, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if res, _ := d.Results(ctx, bid); len(res) != 0 {
		t.Fatalf("results after the attempt was lost = %+v, want none", res)
	}
	if err := d.FinishJobResult(ctx, lost, j.ID, "w1", ResultSuccess, "/nix/store/x.drv", nil, "", t0, nil, ""); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("lost worker finishing its result: %v, want ErrLeaseLost", err)
	}

	j = claim(t, d, "w2", nil, t0.Add(time.Hour))
	rid, err := d.StartJobResult(ctx, bid, j.ID, "p", "package", t0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.FinishJobResult(ctx, rid, j.ID, "w1", ResultSuccess, "", nil, "", t0, nil, ""); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("another worker finishing the result: %v, want ErrLeaseLost", err)
	}
	if err := d.FinishJobResult(ctx, rid, j.ID, "w2", ResultSuccess, "/nix/store/x.drv", []string{"/nix/store/x"}, "", t0, nil, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishJob(ctx, JobFinish{ID: j.ID, Worker: "w2", State: JobSucceeded, At: t0}); err != nil {
		t.Fatal(err)
	}
	res, err := d.Results(ctx, bid)
	if err != nil || len(res) != 1 || res[0].ID != rid || res[0].Status != ResultSuccess {
		t.Fatalf("results = %+v, %v; want the second attempt's success only", res, err)
	}

	// A job that ends while one of its results still runs fails it.
	bid2, _ := newBuildWithJobs(t, d, "s", NewJob{Kind: JobAttr, Attr: "q"})
	j2 := claim(t, d, "w1", nil, t0)
	if _, err := d.StartJobResult(ctx, bid2, j2.ID, "q", "package", t0, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishJob(ctx, JobFinish{ID: j2.ID, Worker: "w1", State: JobFailed, Error: "x", At: t0}); err != nil {
		t.Fatal(err)
	}
	if res, _ := d.Results(ctx, bid2); len(res) != 1 || res[0].Status != ResultFailed || res[0].FinishedAt == nil {
		t.Errorf("result of a job that ended under it = %+v, want failed", res)
	}
}

// TestCancelJobs: a build's queued and running jobs are cancelled; its
// worker learns it at its next renewal; finished jobs keep their end.
func TestCancelJobs(t *testing.T) { forEachDB(t, testCancelJobs) }

func testCancelJobs(t *testing.T, d *DB) {
	ctx := t.Context()
	bid, ids := newBuildWithJobs(t, d, "r", NewJob{Kind: JobAttr, Attr: "a"}, NewJob{Kind: JobAttr, Attr: "b"}, NewJob{Kind: JobAttr, Attr: "c"})
	other, _ := newBuildWithJobs(t, d, "s", NewJob{Kind: JobAttr, Attr: "x"})
	done := claim(t, d, "w1", nil, t0)
	if err := d.FinishJob(ctx, JobFinish{ID: done.ID, Worker: "w1", State: JobSucceeded, At: t0}); err != nil {
		t.Fatal(err)
	}
	running := claim(t, d, "w1", nil, t0)
	if _, err := d.StartJobResult(ctx, bid, running.ID, "b", "package", t0, nil); err != nil {
		t.Fatal(err)
	}
	got, err := d.CancelJobs(ctx, bid, t0)
	if err != nil || len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] {
		t.Fatalf("CancelJobs = %+v, %v; want jobs %v", got, err, ids[1:])
	}
	if err := d.RenewLease(ctx, running.ID, "w1", time.Minute, t0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("renewal of a cancelled job: %v, want ErrLeaseLost", err)
	}
	if j, _ := d.Job(ctx, running.ID); j.State != JobCancelled {
		t.Errorf("cancelled job = %+v", j)
	}
	jobs, err := d.BuildJobs(ctx, bid)
	if err != nil || len(jobs) != 3 || jobs[0].State != JobSucceeded || jobs[1].State != JobCancelled || jobs[2].State != JobCancelled {
		t.Errorf("jobs after cancel = %+v, %v", jobs, err)
	}
	if res, _ := d.Results(ctx, bid); len(res) != 1 || res[0].Status != ResultFailed || res[0].Error != "cancelled" {
		t.Errorf("result of the cancelled job = %+v, want failed: cancelled", res)
	}
	if j := claim(t, d, "w1", nil, t0); j.BuildID != other {
		t.Errorf("claim after cancel took %+v, want the other build's job", j)
	}
}

// TestRequeueWorkerJobs: a worker restarting under its name hands back
// the jobs it held at once, without spending an attempt.
func TestRequeueWorkerJobs(t *testing.T) { forEachDB(t, testRequeueWorkerJobs) }

func testRequeueWorkerJobs(t *testing.T, d *DB) {
	ctx := t.Context()
	bid, _ := newBuildWithJobs(t, d, "r", NewJob{Kind: JobAttr, Attr: "a"}, NewJob{Kind: JobAttr, Attr: "b"})
	mine := claim(t, d, "w1", nil, t0)
	theirs := claim(t, d, "w2", nil, t0)
	if _, err := d.StartJobResult(ctx, bid, mine.ID, "a", "package", t0, nil); err != nil {
		t.Fatal(err)
	}
	got, err := d.RequeueWorkerJobs(ctx, "w1")
	if err != nil || len(got) != 1 || got[0].ID != mine.ID || got[0].State != JobQueued || got[0].Attempts != 1 || got[0].MaxAttempts != DefaultMaxAttempts+1 {
		t.Fatalf("RequeueWorkerJobs = %+v, %v", got, err)
	}
	if j, _ := d.Job(ctx, theirs.ID); j.State != JobRunning || j.Worker != "w2" {
		t.Errorf("another worker's job = %+v, want still running on w2", j)
	}
	if res, _ := d.Results(ctx, bid); len(res) != 0 {
		t.Errorf("results of the interrupted attempt = %+v, want none", res)
	}
	active, err := d.ActiveJobs(ctx, 10)
	if err != nil || len(active) != 2 || active[0].ID != theirs.ID || active[1].ID != mine.ID {
		t.Errorf("ActiveJobs = %+v, %v; want running first", active, err)
	}
}

// TestEnqueueJobsFrom: a job queues its build's next jobs only while its
// worker holds it.
func TestEnqueueJobsFrom(t *testing.T) { forEachDB(t, testEnqueueJobsFrom) }

func testEnqueueJobsFrom(t *testing.T, d *DB) {
	ctx := t.Context()
	bid, _ := newBuildWithJobs(t, d, "r", NewJob{Kind: JobEval})
	eval := claim(t, d, "w1", nil, t0)
	next := []NewJob{{BuildID: bid, Kind: JobAttr, Attr: "a"}, {BuildID: bid, Kind: JobAttr, Attr: "b"}}
	if _, err := d.EnqueueJobsFrom(ctx, eval.ID, "w2", next, t0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("enqueue from a job another worker holds: %v, want ErrLeaseLost", err)
	}
	ids, err := d.EnqueueJobsFrom(ctx, eval.ID, "w1", next, t0)
	if err != nil || len(ids) != 2 {
		t.Fatalf("EnqueueJobsFrom = %v, %v", ids, err)
	}
	// A second attempt of the evaluation queues only what is missing.
	if _, _, err := d.ReclaimExpired(ctx, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	eval = claim(t, d, "w2", nil, t0.Add(time.Hour))
	more := append(next, NewJob{BuildID: bid, Kind: JobAttr, Attr: "c"}, NewJob{BuildID: bid, Kind: JobAttr, Attr: "a", AttrKind: "check"})
	again, err := d.EnqueueJobsFrom(ctx, eval.ID, "w2", more, t0)
	if err != nil || len(again) != 2 {
		t.Fatalf("EnqueueJobsFrom of a second attempt = %v, %v; want c and the check a only", again, err)
	}
	if _, err := d.CancelJobs(ctx, bid, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnqueueJobsFrom(ctx, eval.ID, "w2", next, t0); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("enqueue from a cancelled job: %v, want ErrLeaseLost", err)
	}
	if jobs, _ := d.BuildJobs(ctx, bid); len(jobs) != 5 {
		t.Errorf("jobs = %d, want the evaluation and its 4 attributes", len(jobs))
	}
}

func TestActiveBuilds(t *testing.T) { forEachDB(t, testActiveBuilds) }

func testActiveBuilds(t *testing.T, d *DB) {
	ctx := t.Context()
	queued, _, _ := d.CreateBuild(ctx, "a", "api", "/l/a")
	running, _, _ := d.CreateBuild(ctx, "b", "api", "/l/b")
	done, _, _ := d.CreateBuild(ctx, "c", "api", "/l/c")
	if err := d.StartBuild(ctx, running.ID, t0); err != nil {
		t.Fatal(err)
	}
	if err := d.FinishBuild(ctx, done.ID, StatusSuccess, "", t0); err != nil {
		t.Fatal(err)
	}
	got, err := d.ActiveBuilds(ctx)
	if err != nil || len(got) != 2 || got[0].ID != queued.ID || got[1].ID != running.ID || got[1].Status != StatusRunning {
		t.Fatalf("ActiveBuilds = %+v, %v; want builds %d and %d", got, err, queued.ID, running.ID)
	}
}

func TestRepositoryByName(t *testing.T) { forEachDB(t, testRepositoryByName) }

func testRepositoryByName(t *testing.T, d *DB) {
	if _, _, err := d.RepositoryByName(t.Context(), "r"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown repository: %v, want ErrNotFound", err)
	}
	if err := d.SyncRepository(t.Context(), "r", "https://example.com/r.git", "main"); err != nil {
		t.Fatal(err)
	}
	if url, branch, err := d.RepositoryByName(t.Context(), "r"); err != nil || url != "https://example.com/r.git" || branch != "main" {
		t.Errorf("RepositoryByName = %q, %q, %v", url, branch, err)
	}
}

func TestWorkers(t *testing.T) { forEachDB(t, testWorkers) }

func testWorkers(t *testing.T, d *DB) {
	ctx := t.Context()
	if err := d.WorkerHeartbeat(ctx, "ghost", 0, false, t0); err == nil {
		t.Error("heartbeat of an unregistered worker accepted")
	}
	w := Worker{Name: "b1", Host: "build1.example", Systems: []string{"x86_64-linux", "i686-linux"}, Capacity: 4, Version: "1.2", StartedAt: t0, LastSeen: t0}
	if err := d.RegisterWorker(ctx, w); err != nil {
		t.Fatal(err)
	}
	if err := d.WorkerHeartbeat(ctx, "b1", 3, true, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := d.RegisterWorker(ctx, Worker{Name: "a0", Host: "h", Systems: []string{"aarch64-linux"}, Capacity: 1, Version: "1.2", StartedAt: t0, LastSeen: t0}); err != nil {
		t.Fatal(err)
	}
	got, err := d.Workers(ctx)
	if err != nil || len(got) != 2 || got[0].Name != "a0" {
		t.Fatalf("Workers = %+v, %v", got, err)
	}
	b1 := got[1]
	if b1.Host != w.Host || !slices.Equal(b1.Systems, w.Systems) || b1.Capacity != 4 || b1.Running != 3 || !b1.Draining ||
		!b1.LastSeen.Equal(t0.Add(time.Minute)) || !b1.StartedAt.Equal(t0) {
		t.Errorf("worker b1 = %+v", b1)
	}
	// Registering again (a restart) resets what it runs.
	w.StartedAt, w.LastSeen = t0.Add(time.Hour), t0.Add(time.Hour)
	if err := d.RegisterWorker(ctx, w); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Workers(ctx); got[1].Running != 0 || got[1].Draining || !got[1].StartedAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("re-registered worker = %+v", got[1])
	}
}

func TestDerivationMemo(t *testing.T) { forEachDB(t, testDerivationMemo) }

func testDerivationMemo(t *testing.T, d *DB) {
	ctx := t.Context()
	const drv = "/nix/store/aaaa-hello.drv"
	if _, err := d.LookupDerivation(ctx, drv); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown derivation: %v, want ErrNotFound", err)
	}
	if err := d.RecordDerivation(ctx, Derivation{DrvPath: drv, Status: DrvFailed, Error: "builder failed", BuildID: 1, At: t0}); err != nil {
		t.Fatal(err)
	}
	got, err := d.LookupDerivation(ctx, drv)
	if err != nil || got.Status != DrvFailed || got.Error != "builder failed" || got.BuildID != 1 || len(got.OutPaths) != 0 {
		t.Fatalf("failed derivation = %+v, %v", got, err)
	}
	// A forced rebuild that succeeds replaces the failure.
	if err := d.RecordDerivation(ctx, Derivation{DrvPath: drv, Status: DrvBuilt, OutPaths: []string{"/nix/store/o1", "/nix/store/o2"}, BuildID: 2, At: t0}); err != nil {
		t.Fatal(err)
	}
	got, err = d.LookupDerivation(ctx, drv)
	if err != nil || got.Status != DrvBuilt || got.Error != "" || got.BuildID != 2 || !slices.Equal(got.OutPaths, []string{"/nix/store/o1", "/nix/store/o2"}) {
		t.Fatalf("rebuilt derivation = %+v, %v", got, err)
	}
}

func TestJobLogs(t *testing.T) { forEachDB(t, testJobLogs) }

func testJobLogs(t *testing.T, d *DB) {
	ctx := t.Context()
	bid, ids := newBuildWithJobs(t, d, "r", NewJob{Kind: JobEval}, NewJob{Kind: JobAttr, Attr: "a"})
	for i, c := range []struct {
		job  int64
		data string
	}{{ids[0], "eval 1\n"}, {ids[1], "a 1\n"}, {ids[0], "eval 2\n"}, {ids[1], ""}, {ids[1], "a \x00binary\xff\n"}} {
		if err := d.AppendJobLog(ctx, bid, c.job, 1, []byte(c.data), t0); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	all, err := d.BuildLogChunks(ctx, bid, 0, 100)
	if err != nil || len(all) != 4 {
		t.Fatalf("BuildLogChunks = %+v, %v; want 4 chunks (the empty append writes none)", all, err)
	}
	var sb strings.Builder
	for _, c := range all {
		sb.Write(c.Data)
	}
	if want := "eval 1\na 1\neval 2\na \x00binary\xff\n"; sb.String() != want {
		t.Errorf("build log = %q, want %q", sb.String(), want)
	}
	rest, err := d.BuildLogChunks(ctx, bid, all[1].ID, 1)
	if err != nil || len(rest) != 1 || string(rest[0].Data) != "eval 2\n" {
		t.Errorf("BuildLogChunks after %d, limit 1 = %+v, %v", all[1].ID, rest, err)
	}
	jl, err := d.JobLogChunks(ctx, ids[1], 0, 100)
	if err != nil || len(jl) != 2 || string(jl[0].Data) != "a 1\n" || jl[1].Attempt != 1 {
		t.Errorf("JobLogChunks = %+v, %v", jl, err)
	}
}

// TestListen: on PostgreSQL, queueing, claiming, finishing and logging
// wake a listener with the build's id; on SQLite Listen returns nil and
// waiters poll.
func TestListen(t *testing.T) { forEachDB(t, testListen) }

func testListen(t *testing.T, d *DB) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	notes := d.Listen(ctx, slog.New(slog.DiscardHandler), ChanJobs, ChanLogs)
	if d.Dialect() == SQLite {
		if notes != nil {
			t.Fatal("Listen on SQLite returned a channel")
		}
		return
	}
	want := func(what, channel string, buildID int64) {
		t.Helper()
		for {
			select {
			case n, ok := <-notes:
				if !ok {
					t.Fatalf("notifications ended waiting for %s", what)
				}
				if n.Channel == channel && n.BuildID == buildID {
					return
				}
			case <-time.After(time.Minute):
				t.Fatalf("no %s notification for build %d", channel, buildID)
			}
		}
	}
	// The listener may connect after the first notification is sent:
	// queue until one arrives, then expect each of the others.
	b, _, err := d.CreateBuild(ctx, "r", "api", "/l/r")
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	go func() {
		for {
			if _, err := d.EnqueueJobs(ctx, []NewJob{{BuildID: b.ID, Kind: JobAttr, Attr: "warm"}}, t0); err != nil {
				return
			}
			select {
			case <-first:
				return
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	want("the first queue", ChanJobs, b.ID)
	close(first)
	j, err := d.ClaimJob(ctx, "w1", nil, time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	want("a claim", ChanJobs, j.BuildID)
	if err := d.AppendJobLog(ctx, j.BuildID, j.ID, j.Attempts, []byte("line\n"), t0); err != nil {
		t.Fatal(err)
	}
	want("a log", ChanLogs, j.BuildID)
	if err := d.FinishJob(ctx, JobFinish{ID: j.ID, Worker: "w1", State: JobSucceeded, At: t0}); err != nil {
		t.Fatal(err)
	}
	want("an end", ChanJobs, j.BuildID)
}
