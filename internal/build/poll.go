package build

import (
	"context"
	"time"
)

// poll checks every branch for a commit it has not built yet, at start and
// then every PollInterval, and triggers a build when it finds one.
func (o *Orchestrator) poll(ctx context.Context) {
	t := time.NewTicker(o.cfg.PollInterval)
	defer t.Stop()
	for {
		o.pollOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (o *Orchestrator) pollOnce(ctx context.Context) {
	for _, name := range o.order {
		if ctx.Err() != nil {
			return
		}
		r := o.repos[name]
		lsCtx, cancel := context.WithTimeout(ctx, time.Minute)
		head, err := o.git.RemoteHead(lsCtx, r.URL, r.Branch)
		cancel()
		if err != nil {
			o.log.Warn("poll: cannot read remote branch", "repository", name, "err", err)
			continue
		}
		built, err := o.db.LastBuiltCommit(ctx, name)
		if err != nil {
			o.log.Warn("poll", "repository", name, "err", err)
			continue
		}
		if head == built {
			continue
		}
		if b, created, err := o.Trigger(ctx, name, "poll"); err != nil {
			o.log.Warn("poll: trigger", "repository", name, "err", err)
		} else if created {
			o.log.Info("poll: new commit", "repository", name, "commit", head, "build", b.ID)
		}
	}
}
