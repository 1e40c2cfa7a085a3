// Package cachegc collects the garbage of a cache's storage backend: it
// deletes the narinfos and NARs that no root needs and that are older than
// a retention period, and keeps named pins (pins/<name> objects in the
// backend itself, so a standalone cache has them too).
package cachegc

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
)

// DefaultRetention is how old an object must be before gc may delete it.
const DefaultRetention = 720 * time.Hour

// pinPrefix holds the pins: pins/<name>, the store path as content.
const pinPrefix = "pins/"

// pinNameRE is what a pin may be called: one key segment.
var pinNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$`)

// Pin keeps storePath (with its closure) in the backend under name; an
// empty name is the path's base name. A pin of the same name is replaced.
func Pin(ctx context.Context, s objstore.Store, storePath, name string) (string, error) {
	if _, ok := nixstore.ParseHashPart(path.Base(storePath)); !ok || !strings.HasPrefix(storePath, "/") {
		return "", fmt.Errorf("%q is not a store path like /nix/store/<hash>-<name>", storePath)
	}
	if name == "" {
		name = path.Base(storePath)
	}
	if !pinNameRE.MatchString(name) {
		return "", fmt.Errorf("pin name %q: use letters, digits, '.', '_', '+' and '-'", name)
	}
	body := storePath + "\n"
	if err := s.Put(ctx, pinPrefix+name, strings.NewReader(body), int64(len(body)), "text/plain"); err != nil {
		return "", fmt.Errorf("pin %s: %w", storePath, err)
	}
	return name, nil
}

// Unpin removes the pin called name, or the pins of the store path name.
// It reports how many it removed.
func Unpin(ctx context.Context, s objstore.Store, name string) (int, error) {
	pins, err := Pins(ctx, s)
	if err != nil {
		return 0, err
	}
	n := 0
	for pin, p := range pins {
		if pin == name || p == name {
			if err := s.Delete(ctx, pinPrefix+pin); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// Pins returns the pins by name.
func Pins(ctx context.Context, s objstore.Store) (map[string]string, error) {
	out := make(map[string]string)
	var names []string
	err := s.List(ctx, pinPrefix, func(i objstore.Info) error {
		names = append(names, strings.TrimPrefix(i.Key, pinPrefix))
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		b, err := objstore.ReadAll(ctx, s, pinPrefix+n)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // unpinned meanwhile
		}
		if err != nil {
			return nil, err
		}
		out[n] = strings.TrimSpace(string(b))
	}
	return out, nil
}

// Options configure a collection.
type Options struct {
	// Roots are store paths kept with their closures (besides the pins).
	Roots     []string
	Retention time.Duration
	DryRun    bool
	// Parallel bounds the narinfo reads and deletes in flight (default 16).
	Parallel int
	// Now is the time objects' ages are measured from (default time.Now()).
	Now time.Time
	// Deleted, when set, is told each object deleted (or, dry, that would be).
	Deleted func(objstore.Info)
}

// Report is what a collection found and did.
type Report struct {
	Narinfos, Nars         int   // seen
	KeptNarinfos, KeptNars int   // kept
	DeletedNarinfos        int   // deleted (or, dry, to be)
	DeletedNars            int   //
	DeletedBytes           int64 //
	Roots, RootsInBackend  int   // roots given (pins included), and of those held by the backend
	Reachable              int   // narinfos reachable from the roots
}

type entry struct {
	info   objstore.Info
	refs   []string // hash parts
	nar    string   // the NAR's key, "" when unreadable
	recent bool
	keep   bool
}

// Collect deletes from s what no root needs and retention does not protect:
// a narinfo is kept when it is in the closure of a root (the pins, the
// given roots, and every narinfo younger than the retention period, whose
// references must stay valid); a NAR is kept when a kept narinfo names it
// or it is younger than the retention period (its narinfo may be on its
// way). Narinfos are deleted before NARs, so no narinfo ever names a
// missing NAR. Objects other than narinfos and NARs are never touched.
func Collect(ctx context.Context, s objstore.Store, opts Options) (Report, error) {
	var rep Report
	if opts.Retention < 0 {
		return rep, errors.New("retention must not be negative")
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 16
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	cutoff := opts.Now.Add(-opts.Retention)
	pins, err := Pins(ctx, s)
	if err != nil {
		return rep, fmt.Errorf("read pins: %w", err)
	}
	roots := append([]string(nil), opts.Roots...)
	for _, p := range pins {
		roots = append(roots, p)
	}
	rep.Roots = len(roots)

	narinfos := make(map[string]*entry) // by hash part
	nars := make(map[string]objstore.Info)
	err = s.List(ctx, "", func(i objstore.Info) error {
		switch {
		case strings.HasPrefix(i.Key, "nar/"):
			nars[i.Key] = i
		case strings.HasSuffix(i.Key, ".narinfo") && !strings.Contains(i.Key, "/"):
			narinfos[strings.TrimSuffix(i.Key, ".narinfo")] = &entry{info: i, recent: i.ModTime.After(cutoff)}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.Narinfos, rep.Nars = len(narinfos), len(nars)
	if err := readNarinfos(ctx, s, narinfos, opts.Parallel); err != nil {
		return rep, err
	}

	// Mark: the closures of the roots and of the recent narinfos.
	var stack []string
	for _, r := range roots {
		h := hashPart(r)
		if e := narinfos[h]; e != nil {
			rep.RootsInBackend++
			stack = append(stack, h)
		}
	}
	for h, e := range narinfos {
		if e.recent {
			stack = append(stack, h)
		}
	}
	for len(stack) > 0 {
		h := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		e := narinfos[h]
		if e == nil || e.keep {
			continue
		}
		e.keep = true
		if !e.recent {
			rep.Reachable++
		}
		stack = append(stack, e.refs...)
	}
	keptNars := make(map[string]bool)
	var delNarinfos, delNars []objstore.Info
	for _, e := range narinfos {
		if e.keep {
			rep.KeptNarinfos++
			if e.nar != "" {
				keptNars[e.nar] = true
			}
			continue
		}
		delNarinfos = append(delNarinfos, e.info)
	}
	for k, i := range nars {
		if keptNars[k] || i.ModTime.After(cutoff) {
			rep.KeptNars++
			continue
		}
		delNars = append(delNars, i)
	}
	// Narinfos first: once they are gone, nothing names the NARs.
	for _, batch := range [][]objstore.Info{delNarinfos, delNars} {
		if err := deleteAll(ctx, s, batch, opts); err != nil {
			return rep, err
		}
	}
	rep.DeletedNarinfos, rep.DeletedNars = len(delNarinfos), len(delNars)
	for _, b := range [][]objstore.Info{delNarinfos, delNars} {
		for _, i := range b {
			rep.DeletedBytes += i.Size
		}
	}
	return rep, nil
}

// readNarinfos reads every narinfo's references and NAR. A narinfo that
// cannot be parsed is kept (never deleted on a guess).
func readNarinfos(ctx context.Context, s objstore.Store, narinfos map[string]*entry, parallel int) error {
	entries := make([]*entry, 0, len(narinfos))
	for _, e := range narinfos {
		entries = append(entries, e)
	}
	return forEach(ctx, parallel, entries, func(ctx context.Context, e *entry) error {
		b, err := objstore.ReadAll(ctx, s, e.info.Key)
		if errors.Is(err, objstore.ErrNotFound) {
			e.keep = false // deleted meanwhile: nothing to do
			return nil
		}
		if err != nil {
			return err
		}
		ni, err := narinfo.Parse(string(b))
		if err != nil {
			e.recent = true // unparsable: kept
			return nil
		}
		e.nar = ni.URL
		for _, r := range ni.References {
			e.refs = append(e.refs, hashPart(r))
		}
		return nil
	})
}

func deleteAll(ctx context.Context, s objstore.Store, objs []objstore.Info, opts Options) error {
	if opts.DryRun {
		for _, i := range objs {
			if opts.Deleted != nil {
				opts.Deleted(i)
			}
		}
		return nil
	}
	var mu sync.Mutex
	return forEach(ctx, opts.Parallel, objs, func(ctx context.Context, i objstore.Info) error {
		if err := s.Delete(ctx, i.Key); err != nil {
			return err
		}
		if opts.Deleted != nil {
			mu.Lock()
			opts.Deleted(i)
			mu.Unlock()
		}
		return nil
	})
}

// forEach runs fn on every item, at most parallel at once, and stops at the
// first error, which it returns.
func forEach[T any](ctx context.Context, parallel int, items []T, fn func(context.Context, T) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(ctx, it); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// hashPart is the hash part of a store path or base name.
func hashPart(p string) string {
	b := path.Base(p)
	if h, _, ok := strings.Cut(b, "-"); ok {
		return h
	}
	return b
}
