package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// tree is a fake SysRoot: file contents by path, and symlinks by path
// (a value starting with "->").
type tree map[string]string

func (tr tree) build(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range tr {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(v, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// with returns a copy of tr with changes applied; an empty value deletes.
func (tr tree) with(changes tree) tree {
	out := maps.Clone(tr)
	for k, v := range changes {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

const cpuinfo = `processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
cpu MHz		: 2400.000

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz

processor	: 2
model name	: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz

processor	: 3
model name	: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
`

// server is a bare-metal machine with two NICs, a bridge, loopback, and
// its root on /dev/sda2.
var server = tree{
	"sys/class/dmi/id/product_uuid":                         "4c4c4544-0042-3510-8057-b4c04f4d3632\n",
	"sys/class/dmi/id/product_serial":                       "CN7016355A0123\n",
	"sys/class/dmi/id/product_name":                         "PowerEdge R630\n",
	"sys/class/dmi/id/board_serial":                         ".5P5DMB2.CN7016355A0123.\n",
	"sys/class/dmi/id/board_name":                           "02C2CP\n",
	"sys/class/dmi/id/chassis_serial":                       "5P5DMB2\n",
	"sys/class/dmi/id/chassis_type":                         "23\n",
	"sys/class/dmi/id/sys_vendor":                           "Dell Inc.\n",
	"etc/machine-id":                                        "0123456789abcdef0123456789abcdef\n",
	"proc/cpuinfo":                                          cpuinfo,
	"proc/meminfo":                                          "MemTotal:       16314540 kB\nMemFree:         1234 kB\n",
	"sys/class/net/lo/address":                              "00:00:00:00:00:00\n",
	"sys/class/net/eno1/address":                            "B0:83:FE:C6:3A:01\n",
	"sys/class/net/eno1/device":                             "->../../../0000:01:00.0",
	"sys/class/net/eno2/address":                            "b0:83:fe:c6:3a:02\n",
	"sys/class/net/eno2/device":                             "->../../../0000:01:00.1",
	"sys/class/net/br0/address":                             "b0:83:fe:c6:3a:01\n", // virtual: no device
	"sys/class/net/docker0/address":                         "02:42:ac:11:00:01\n",
	"proc/self/mounts":                                      "sysfs /sys sysfs rw 0 0\n/dev/sda2 / ext4 rw,relatime 0 0\n/dev/sda1 /boot vfat rw 0 0\n",
	"dev/disk/by-uuid/2f4a9b1e-77c3-4c1e-9d0a-5b2f6e8c1d3a": "->../../sda2",
	"dev/disk/by-uuid/ABCD-1234":                            "->../../sda1",
	"dev/sda1":                                              "",
	"dev/sda2":                                              "",
}

func TestFacts(t *testing.T) {
	tests := []struct {
		name string
		tree tree
		want map[string]any
	}{
		{
			name: "bare metal",
			tree: server,
			want: map[string]any{
				"dmi_product_uuid":   "4c4c4544-0042-3510-8057-b4c04f4d3632",
				"dmi_product_serial": "CN7016355A0123",
				"dmi_product_name":   "PowerEdge R630",
				"dmi_board_serial":   ".5P5DMB2.CN7016355A0123.",
				"dmi_board_name":     "02C2CP",
				"dmi_chassis_serial": "5P5DMB2",
				"dmi_chassis_type":   "23",
				"dmi_sys_vendor":     "Dell Inc.",
				"machine_id":         "0123456789abcdef0123456789abcdef",
				"cpu_model":          "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz",
				"cpu_count":          4,
				"memory_gib":         int64(16),
				"nic_macs":           []string{"b0:83:fe:c6:3a:01", "b0:83:fe:c6:3a:02"},
				"root_fs_uuid":       "2f4a9b1e-77c3-4c1e-9d0a-5b2f6e8c1d3a",
			},
		},
		{
			name: "VM without DMI or disks",
			tree: tree{
				"etc/machine-id":             "fedcba9876543210fedcba9876543210\n",
				"proc/cpuinfo":               "processor : 0\nmodel name : QEMU Virtual CPU\n",
				"proc/meminfo":               "MemTotal: 2000000 kB\n",
				"sys/class/net/ens3/address": "52:54:00:12:34:56\n",
				"sys/class/net/ens3/device":  "->../../../virtio0",
				"proc/mounts":                "none / tmpfs rw 0 0\n",
			},
			want: map[string]any{
				"machine_id": "fedcba9876543210fedcba9876543210",
				"cpu_model":  "QEMU Virtual CPU",
				"cpu_count":  1,
				"memory_gib": int64(2),
				"nic_macs":   []string{"52:54:00:12:34:56"},
			},
		},
		{
			name: "root on LUKS through /dev/mapper, mount point escaped",
			tree: tree{
				"proc/self/mounts":          "/dev/mapper/crypt\\040root / btrfs rw 0 0\n",
				"dev/mapper/crypt root":     "->../dm-0",
				"dev/dm-0":                  "",
				"dev/disk/by-uuid/1111":     "->../../sda3",
				"dev/disk/by-uuid/2222":     "->../../dm-0",
				"sys/class/net/wg0/address": "00:00:00:00:00:00\n",
			},
			want: map[string]any{"root_fs_uuid": "2222"},
		},
		{
			name: "nothing readable",
			tree: tree{},
			want: map[string]any{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Facts(tt.tree.build(t))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Facts() =\n%#v\nwant\n%#v", got, tt.want)
			}
			if _, err := Fingerprint(got); err != nil {
				t.Errorf("Fingerprint: %v", err)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	base := fingerprintOf(t, server)
	if !strings.HasPrefix(base, "sha256:") || len(base) != len("sha256:")+64 {
		t.Fatalf("fingerprint %q is not sha256:<64 hex digits>", base)
	}
	tests := []struct {
		name     string
		change   tree
		wantSame bool
	}{
		{"same facts", tree{}, true},
		{"NICs listed in another order", tree{
			"sys/class/net/eno1/address": "b0:83:fe:c6:3a:02\n",
			"sys/class/net/eno2/address": "b0:83:fe:c6:3a:01\n",
		}, true},
		{"MAC case and trailing space", tree{"sys/class/net/eno1/address": "b0:83:fe:c6:3a:01  \n"}, true},
		{"virtual interface added", tree{
			"sys/class/net/veth12/address": "6a:11:22:33:44:55\n",
			"sys/class/net/tun0/address":   "00:00:00:00:00:00\n",
		}, true},
		{"memory moves by a few MB with the kernel", tree{"proc/meminfo": "MemTotal:       16290000 kB\n"}, true},
		{"a MAC changed", tree{"sys/class/net/eno2/address": "b0:83:fe:c6:3a:03\n"}, false},
		{"a NIC added", tree{
			"sys/class/net/enp5s0/address": "3c:fd:fe:00:00:01\n",
			"sys/class/net/enp5s0/device":  "->../../../0000:05:00.0",
		}, false},
		{"another machine-id", tree{"etc/machine-id": "ffffffffffffffffffffffffffffffff\n"}, false},
		{"another board", tree{"sys/class/dmi/id/board_serial": "OTHER\n"}, false},
		{"memory added", tree{"proc/meminfo": "MemTotal:       32600000 kB\n"}, false},
		{"root reformatted", tree{
			"dev/disk/by-uuid/2f4a9b1e-77c3-4c1e-9d0a-5b2f6e8c1d3a": "",
			"dev/disk/by-uuid/99999999-77c3-4c1e-9d0a-5b2f6e8c1d3a": "->../../sda2",
		}, false},
		{"no DMI at all", tree{
			"sys/class/dmi/id/product_uuid": "", "sys/class/dmi/id/product_serial": "",
			"sys/class/dmi/id/product_name": "", "sys/class/dmi/id/board_serial": "",
			"sys/class/dmi/id/board_name": "", "sys/class/dmi/id/chassis_serial": "",
			"sys/class/dmi/id/chassis_type": "", "sys/class/dmi/id/sys_vendor": "",
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fingerprintOf(t, server.with(tt.change))
			if same := got == base; same != tt.wantSame {
				t.Errorf("fingerprint %s, base %s: same = %v, want %v", got, base, same, tt.wantSame)
			}
		})
	}
}

func TestFingerprintCanonical(t *testing.T) {
	a, err := Fingerprint(map[string]any{"nic_macs": []string{"b", "a"}, "cpu_count": 2, "machine_id": "x"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Fingerprint(map[string]any{"machine_id": "x", "cpu_count": 2, "nic_macs": []string{"a", "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("fingerprints differ with list and key order: %s, %s", a, b)
	}
	// The canonical form is json.Marshal's: sorted keys, no whitespace.
	sum := sha256.Sum256([]byte(`{"cpu_count":2,"machine_id":"x","nic_macs":["a","b"]}`))
	if want := "sha256:" + hex.EncodeToString(sum[:]); a != want {
		t.Errorf("fingerprint %s is not the sha256 of the canonical JSON, %s", a, want)
	}
}

func fingerprintOf(t *testing.T, tr tree) string {
	t.Helper()
	fp, err := Fingerprint(Facts(tr.build(t)))
	if err != nil {
		t.Fatal(err)
	}
	return fp
}
