//go:build !linux

package objstore

import "os"

// startWriteback is Linux's sync_file_range; elsewhere the sync does it all.
func startWriteback(*os.File) {}
