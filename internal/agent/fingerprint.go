package agent

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Facts reads what identifies the machine, from files under sysRoot ("/"
// on a real host). A fact whose file is missing or unreadable is left out:
// a VM has no DMI serials, a container no root device.
//
// The facts are chosen to stay the same across reboots and NixOS
// generations and to change when the hardware or the installation does:
//
//   - memory_gib is MemTotal rounded up to whole GiB, since the exact
//     MemTotal moves by megabytes between kernel versions;
//   - nic_macs lists only interfaces with a "device" entry in
//     sys/class/net/<if>, i.e. backed by hardware; bridges, bonds, VLANs,
//     veth, tun and WireGuard interfaces have none, and come and go with
//     the configuration.
func Facts(sysRoot string) map[string]any {
	facts := make(map[string]any)
	read := func(rel string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(sysRoot, rel))
		if err != nil {
			return "", false
		}
		s := strings.TrimSpace(string(b))
		return s, s != ""
	}
	// Serials and the product UUID are readable only by root; as another
	// user they are absent.
	for _, f := range []string{
		"product_uuid", "product_serial", "product_name",
		"board_serial", "board_name",
		"chassis_serial", "chassis_type",
		"sys_vendor",
	} {
		if v, ok := read(filepath.Join("sys/class/dmi/id", f)); ok {
			facts["dmi_"+f] = v
		}
	}
	if v, ok := read("etc/machine-id"); ok {
		facts["machine_id"] = v
	}
	if b, err := os.ReadFile(filepath.Join(sysRoot, "proc/cpuinfo")); err == nil {
		model, count := parseCPUInfo(b)
		if model != "" {
			facts["cpu_model"] = model
		}
		if count > 0 {
			facts["cpu_count"] = count
		}
	}
	if b, err := os.ReadFile(filepath.Join(sysRoot, "proc/meminfo")); err == nil {
		if kib, ok := memTotalKiB(b); ok {
			facts["memory_gib"] = (kib + 1<<20 - 1) >> 20
		}
	}
	if macs := physicalMACs(sysRoot); len(macs) > 0 {
		facts["nic_macs"] = macs
	}
	if uuid := rootFSUUID(sysRoot); uuid != "" {
		facts["root_fs_uuid"] = uuid
	}
	return facts
}

// Fingerprint returns "sha256:<hex>" of the canonical JSON of facts: keys
// sorted (encoding/json sorts map keys), no whitespace, string lists sorted.
func Fingerprint(facts map[string]any) (string, error) {
	canon := make(map[string]any, len(facts))
	for k, v := range facts {
		if l, ok := v.([]string); ok {
			v = slices.Sorted(slices.Values(l))
		}
		canon[k] = v
	}
	b, err := json.Marshal(canon)
	if err != nil {
		return "", fmt.Errorf("encode facts: %w", err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// parseCPUInfo returns the first "model name" and the number of
// "processor" entries of /proc/cpuinfo.
func parseCPUInfo(b []byte) (model string, count int) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "processor":
			count++
		case "model name":
			if model == "" {
				model = strings.TrimSpace(val)
			}
		}
	}
	return model, count
}

// memTotalKiB reads MemTotal (in kB) from /proc/meminfo.
func memTotalKiB(b []byte) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		return n, err == nil && n > 0
	}
	return 0, false
}

// physicalMACs returns the sorted, lower-case MAC addresses of the
// interfaces under sys/class/net that have a device entry, leaving out
// loopback and all-zero addresses.
func physicalMACs(sysRoot string) []string {
	dir := filepath.Join(sysRoot, "sys/class/net")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var macs []string
	for _, e := range entries {
		name := e.Name()
		if name == "lo" {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, name, "device")); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name, "address"))
		if err != nil {
			continue
		}
		mac := strings.ToLower(strings.TrimSpace(string(b)))
		if mac == "" || strings.Trim(mac, "0:") == "" {
			continue
		}
		macs = append(macs, mac)
	}
	slices.Sort(macs)
	return slices.Compact(macs)
}

// rootFSUUID finds the device mounted at "/" and the dev/disk/by-uuid link
// that resolves to the same device node. A root that is not a block device
// (tmpfs, a ZFS dataset, overlayfs) has no UUID.
func rootFSUUID(sysRoot string) string {
	var dev string
	for _, f := range []string{"proc/self/mounts", "proc/mounts"} {
		b, err := os.ReadFile(filepath.Join(sysRoot, f))
		if err != nil {
			continue
		}
		dev = rootDevice(b)
		break
	}
	if !strings.HasPrefix(dev, "/") {
		return ""
	}
	dev = resolveLink(sysRoot, dev)
	const byUUID = "/dev/disk/by-uuid"
	entries, err := os.ReadDir(filepath.Join(sysRoot, byUUID))
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if resolveLink(sysRoot, filepath.Join(byUUID, e.Name())) == dev {
			return e.Name()
		}
	}
	return ""
}

// rootDevice returns the source of the last mount at "/" in a mounts file
// (the last one is the one visible).
func rootDevice(mounts []byte) string {
	var dev string
	sc := bufio.NewScanner(bytes.NewReader(mounts))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[1] == "/" {
			dev = unescapeMount(f[0])
		}
	}
	return dev
}

// unescapeMount undoes the octal escapes (\040 for a space) of /proc/mounts.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// resolveLink follows symlinks at p (an absolute path as seen on the host)
// inside sysRoot, and returns the final host path.
func resolveLink(sysRoot, p string) string {
	for range 16 {
		t, err := os.Readlink(filepath.Join(sysRoot, p))
		if err != nil {
			return p
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = filepath.Clean(t)
	}
	return p
}
