// Package narinfo formats, parses and signs Nix .narinfo documents.
package narinfo

import (
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// ContentType is the MIME type Nix uses for narinfo files.
const ContentType = "text/x-nix-narinfo"

// NarInfo describes one store path in a binary cache. Paths are full store
// paths; References and Deriver are written as base names, as Nix does.
type NarInfo struct {
	StorePath   string
	URL         string
	Compression string
	FileHash    string // "sha256:<nix32>", empty when unknown
	FileSize    uint64 // 0 when unknown
	NarHash     string // "sha256:<nix32>"
	NarSize     uint64
	References  []string // full store paths
	Deriver     string   // full store path, empty when unknown
	Sigs        []string
	CA          string
}

// String renders the narinfo in the field order Nix writes.
func (n *NarInfo) String() string {
	var b strings.Builder
	b.Grow(512 + 64*len(n.References))
	b.WriteString("StorePath: ")
	b.WriteString(n.StorePath)
	b.WriteString("\nURL: ")
	b.WriteString(n.URL)
	b.WriteString("\nCompression: ")
	b.WriteString(n.Compression)
	if n.FileHash != "" {
		b.WriteString("\nFileHash: ")
		b.WriteString(n.FileHash)
	}
	if n.FileSize != 0 {
		b.WriteString("\nFileSize: ")
		b.WriteString(strconv.FormatUint(n.FileSize, 10))
	}
	b.WriteString("\nNarHash: ")
	b.WriteString(n.NarHash)
	b.WriteString("\nNarSize: ")
	b.WriteString(strconv.FormatUint(n.NarSize, 10))
	// Nix always writes References, even when there are none.
	b.WriteString("\nReferences: ")
	for i, r := range n.References {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(path.Base(r))
	}
	if n.Deriver != "" {
		b.WriteString("\nDeriver: ")
		b.WriteString(path.Base(n.Deriver))
	}
	for _, s := range n.Sigs {
		b.WriteString("\nSig: ")
		b.WriteString(s)
	}
	if n.CA != "" {
		b.WriteString("\nCA: ")
		b.WriteString(n.CA)
	}
	b.WriteByte('\n')
	return b.String()
}

// Fingerprint is the message Nix signs:
// 1;<storePath>;<narHash>;<narSize>;<sorted full reference paths, comma-separated>.
func (n *NarInfo) Fingerprint() string {
	refs := make([]string, len(n.References))
	copy(refs, n.References)
	sort.Strings(refs)
	return "1;" + n.StorePath + ";" + n.NarHash + ";" + strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(refs, ",")
}

// Sign appends a signature by each key.
func (n *NarInfo) Sign(keys ...*signing.SecretKey) {
	fp := []byte(n.Fingerprint())
	for _, k := range keys {
		n.Sigs = append(n.Sigs, k.Sign(fp))
	}
}

// Verify reports whether one of the signatures is by key and valid.
func (n *NarInfo) Verify(key *signing.PublicKey) bool {
	fp := []byte(n.Fingerprint())
	for _, s := range n.Sigs {
		if key.Verify(fp, s) {
			return true
		}
	}
	return false
}

// Parse reads a narinfo. References and Deriver come back as full store
// paths under the directory of StorePath.
func Parse(text string) (*NarInfo, error) {
	n := &NarInfo{}
	var refs []string
	// Not a bufio.Scanner: its 64 KiB line limit would silently end the
	// parse at the References line of a path with a thousand references.
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			// "References:" with nothing after it.
			k, v, ok = strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("narinfo: malformed line %q", line)
			}
		}
		var err error
		switch k {
		case "StorePath":
			n.StorePath = v
		case "URL":
			n.URL = v
		case "Compression":
			n.Compression = v
		case "FileHash":
			n.FileHash = v
		case "FileSize":
			n.FileSize, err = strconv.ParseUint(v, 10, 64)
		case "NarHash":
			n.NarHash = v
		case "NarSize":
			n.NarSize, err = strconv.ParseUint(v, 10, 64)
		case "References":
			refs = strings.Fields(v)
		case "Deriver":
			n.Deriver = v
		case "Sig":
			n.Sigs = append(n.Sigs, v)
		case "CA":
			n.CA = v
		}
		if err != nil {
			return nil, fmt.Errorf("narinfo: %s: %w", k, err)
		}
	}
	if n.StorePath == "" || n.URL == "" || n.NarHash == "" {
		return nil, fmt.Errorf("narinfo: missing StorePath, URL or NarHash")
	}
	dir := path.Dir(n.StorePath)
	for _, r := range refs {
		if !baseName(r) {
			return nil, fmt.Errorf("narinfo: reference %q is not the base name of a store path", r)
		}
		n.References = append(n.References, dir+"/"+r)
	}
	if n.Deriver != "" && n.Deriver != "unknown-deriver" {
		if !baseName(n.Deriver) {
			return nil, fmt.Errorf("narinfo: deriver %q is not the base name of a store path", n.Deriver)
		}
		n.Deriver = dir + "/" + n.Deriver
	}
	if n.Compression == "" {
		n.Compression = "bzip2"
	}
	return n, nil
}

// baseName reports whether s can be a file name in the store directory:
// String writes path.Base of each reference, which must give s back.
func baseName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}
