package db

import (
	"context"
	"fmt"
	"strings"
)

// CacheRoots returns the store paths `crystal-forge cache gc` must keep
// (with their closures): the outputs of the newest successful result of
// each repository's attributes, and every host's current, desired and
// pinned target system.
func (d *DB) CacheRoots(ctx context.Context) ([]string, error) {
	var out []string
	// The newest success of each (repository, attribute, kind): the
	// highest result id among them.
	rows, err := d.sql.QueryContext(ctx, `SELECT r.out_paths FROM build_results r WHERE r.id IN (
		SELECT MAX(r2.id) FROM build_results r2 JOIN builds b ON b.id = r2.build_id
		WHERE r2.status = 'success' GROUP BY b.repository, r2.attr, r2.kind)`)
	if err != nil {
		return nil, fmt.Errorf("cache roots from builds: %w", err)
	}
	for rows.Next() {
		var outs string
		if err := rows.Scan(&outs); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cache roots from builds: %w", err)
		}
		out = append(out, strings.Fields(outs)...)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, fmt.Errorf("cache roots from builds: %w", err)
	}
	rows, err = d.sql.QueryContext(ctx, `SELECT current_system, desired, target FROM hosts`)
	if err != nil {
		return nil, fmt.Errorf("cache roots from hosts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var cur, desired, target string
		if err := rows.Scan(&cur, &desired, &target); err != nil {
			return nil, fmt.Errorf("cache roots from hosts: %w", err)
		}
		for _, p := range []string{cur, desired, target} {
			if p != "" {
				out = append(out, p)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cache roots from hosts: %w", err)
	}
	return out, nil
}
