// Command fleetload is a load generator for the fleet server: it simulates
// N agents (10,000 by default) sending signed heartbeats to one server and
// reports throughput, latency percentiles and errors.
//
// Each simulated agent has its own ed25519 key (cached in --keys-dir so the
// same agents can be pre-registered in the server's configuration before
// the run: see --print-hosts), its own strictly increasing timestamps (no
// false replays), a fresh nonce per heartbeat, a valid-looking current
// system and a constant hardware fingerprint over a realistic facts map.
// Workers take hosts round-robin, so every host heartbeats again and again:
// a fleet compressed in time. Every reply's signature is verified with the
// server's key (from GET /info) and its nonce echo checked.
//
//	fleetload --keys-dir K --hosts 10000 --print-hosts > hosts.toml
//	fleetload --server http://127.0.0.1:8000 --keys-dir K --duration 30s --concurrency 64
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

const keysFile = "agents.keys"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fleetload:", err)
		os.Exit(1)
	}
}

type options struct {
	server      string
	hosts       int
	keysDir     string
	printHosts  bool
	duration    time.Duration
	concurrency int
	rate        float64
	warmup      bool
	timeout     time.Duration
	keepAlive   bool
	dbPath      string
	serverPID   int
	jsonOut     string
}

func run() error {
	var o options
	flag.StringVar(&o.server, "server", "http://127.0.0.1:8000", "server API URL")
	flag.IntVar(&o.hosts, "hosts", 10000, "number of simulated agents (host-00001 ...)")
	flag.StringVar(&o.keysDir, "keys-dir", "", "directory caching the agents' secret keys (required)")
	flag.BoolVar(&o.printHosts, "print-hosts", false, "print the [[hosts]] TOML for the agents' keys (policy manual, no target) and exit")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "length of the measured phase")
	flag.IntVar(&o.concurrency, "concurrency", 64, "requests in flight")
	flag.Float64Var(&o.rate, "rate", 0, "target heartbeats/s over all agents (0: as fast as possible)")
	flag.BoolVar(&o.warmup, "warmup", true, "send every host's first heartbeat once before measuring")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.BoolVar(&o.keepAlive, "keepalive", true, "reuse connections (false: one TCP connection per heartbeat, as separate agents would; mind ephemeral ports)")
	flag.StringVar(&o.dbPath, "db", "", "server's SQLite database file, to report its size (with -wal and -shm)")
	flag.IntVar(&o.serverPID, "server-pid", 0, "server process id, to report its CPU time and RSS during the measured phase (same machine only)")
	flag.StringVar(&o.jsonOut, "json", "", "also write the report as JSON to this file")
	flag.Parse()
	if o.keysDir == "" {
		return errors.New("--keys-dir is required")
	}
	if o.hosts < 1 || o.hosts > 99999 {
		return errors.New("--hosts must be between 1 and 99999")
	}
	if o.concurrency < 1 {
		return errors.New("--concurrency must be at least 1")
	}
	keys, err := loadOrGenerateKeys(o.keysDir, o.hosts)
	if err != nil {
		return err
	}
	if o.printHosts {
		w := bufio.NewWriter(os.Stdout)
		fmt.Fprintf(w, "# %d simulated agents for bench/fleetload (keys in %s)\n", len(keys), o.keysDir)
		for i, k := range keys {
			fmt.Fprintf(w, "\n[[hosts]]\nname = %q\npublic_key = %q\npolicy = \"manual\"\n", hostName(i), k.Public().String())
		}
		return w.Flush()
	}
	return load(o, keys)
}

func hostName(i int) string { return fmt.Sprintf("host-%05d", i+1) }

// loadOrGenerateKeys reads n keys from dir/agents.keys (one secret key a
// line), generating and appending the missing ones.
func loadOrGenerateKeys(dir string, n int) ([]*signing.SecretKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, keysFile)
	var keys []*signing.SecretKey
	if b, err := os.ReadFile(path); err == nil {
		for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if line == "" {
				continue
			}
			k, err := signing.ParseSecretKey(line)
			if err != nil {
				return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
			}
			keys = append(keys, k)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(keys) >= n {
		return keys[:n], nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	for i := len(keys); i < n; i++ {
		k, err := signing.Generate(hostName(i), nil)
		if err != nil {
			f.Close()
			return nil, err
		}
		keys = append(keys, k)
		fmt.Fprintln(w, k.String())
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	return keys, f.Close()
}

// agent is one simulated host.
type agent struct {
	name        string
	key         *signing.SecretKey
	current     string
	fingerprint string
	facts       map[string]any

	mu   sync.Mutex // one heartbeat in flight per host, in timestamp order
	last time.Time
}

func newAgent(i int, key *signing.SecretKey) *agent {
	name := hostName(i)
	r := rand.New(rand.NewPCG(uint64(i), 0x5eed))
	hexs := func(n int) string {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		return hex.EncodeToString(b)
	}
	uuid := func() string {
		h := hexs(16)
		return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	}
	mac := func() string {
		h := hexs(6)
		parts := make([]string, 6)
		for j := range parts {
			parts[j] = h[2*j : 2*j+2]
		}
		parts[0] = "52"
		return strings.Join(parts, ":")
	}
	models := []struct{ vendor, product, board, cpu string }{
		{"Dell Inc.", "PowerEdge R650", "0PYXKY", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"},
		{"Supermicro", "SYS-1029P-WTR", "X11DDW-L", "Intel(R) Xeon(R) Silver 4214R CPU @ 2.40GHz"},
		{"LENOVO", "ThinkSystem SR645", "7D2X", "AMD EPYC 7443 24-Core Processor"},
		{"QEMU", "Standard PC (Q35 + ICH9, 2009)", "", "AMD EPYC-Milan Processor"},
	}
	m := models[i%len(models)]
	facts := map[string]any{
		"dmi_product_uuid":   uuid(),
		"dmi_product_serial": strings.ToUpper(hexs(4)),
		"dmi_product_name":   m.product,
		"dmi_board_serial":   strings.ToUpper(hexs(6)),
		"dmi_board_name":     m.board,
		"dmi_chassis_serial": strings.ToUpper(hexs(4)),
		"dmi_chassis_type":   "23",
		"dmi_sys_vendor":     m.vendor,
		"machine_id":         hexs(16),
		"cpu_model":          m.cpu,
		"cpu_count":          []int{4, 8, 16, 32, 64}[r.IntN(5)],
		"memory_gib":         []int{8, 16, 32, 64, 128, 256}[r.IntN(6)],
		"nic_macs":           []string{mac(), mac()},
		"root_fs_uuid":       uuid(),
	}
	slices.Sort(facts["nic_macs"].([]string))
	canon, _ := json.Marshal(facts) // map keys sorted, as the agent's fingerprint
	sum := sha256.Sum256(canon)
	h := sha256.Sum256([]byte("system of " + name))
	return &agent{
		name:        name,
		key:         key,
		current:     "/nix/store/" + nixbase32.Encode(h[:20]) + "-nixos-system-" + name + "-24.11.20241201.0a1b2c3",
		fingerprint: "sha256:" + hex.EncodeToString(sum[:]),
		facts:       facts,
	}
}

// outcome classifies one heartbeat.
type outcome struct {
	kind string // "ok", "http-NNN", "transport", "bad-signature", "nonce-mismatch", ...
	lat  time.Duration
}

type client struct {
	url       string
	http      *http.Client
	serverKey []*signing.PublicKey
}

// beat sends one heartbeat for a and checks the reply.
func (c *client) beat(ctx context.Context, a *agent) outcome {
	a.mu.Lock()
	defer a.mu.Unlock()
	ts := time.Now().UTC().Truncate(time.Millisecond)
	if !ts.After(a.last) {
		ts = a.last.Add(time.Millisecond)
	}
	a.last = ts
	hb := fleetproto.Heartbeat{
		Host: a.name, Current: a.current, Fingerprint: a.fingerprint, Facts: a.facts,
		Timestamp: ts, Nonce: fleetproto.NewNonce(), Agent: "fleetload/1",
	}
	body, err := json.Marshal(hb)
	if err != nil {
		return outcome{kind: "encode"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url+fleetproto.Path, bytes.NewReader(body))
	if err != nil {
		return outcome{kind: "request"}
	}
	req.Header.Set("Content-Type", "application/json")
	fleetproto.SignHeartbeat(req.Header, body, a.key)
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return outcome{kind: "transport", lat: time.Since(start)}
	}
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		return outcome{kind: "transport", lat: lat}
	}
	if resp.StatusCode != http.StatusOK {
		return outcome{kind: "http-" + strconv.Itoa(resp.StatusCode), lat: lat}
	}
	if err := fleetproto.VerifyReply(resp.Header, out, c.serverKey); err != nil {
		return outcome{kind: "bad-signature", lat: lat}
	}
	var r fleetproto.Reply
	if err := json.Unmarshal(out, &r); err != nil {
		return outcome{kind: "bad-reply", lat: lat}
	}
	switch {
	case r.Nonce != hb.Nonce:
		return outcome{kind: "nonce-mismatch", lat: lat}
	case r.Host != a.name:
		return outcome{kind: "host-mismatch", lat: lat}
	case r.Status != "approved":
		return outcome{kind: "not-approved", lat: lat}
	case r.Deploy || r.Target != a.current:
		// Policy manual without a target: the host is told to stay put.
		return outcome{kind: "unexpected-target", lat: lat}
	}
	return outcome{kind: "ok", lat: lat}
}

// phase runs heartbeats until next() says stop, with conc workers.
type phaseResult struct {
	Name        string         `json:"name"`
	Heartbeats  int            `json:"heartbeats"`
	OK          int            `json:"ok"`
	Errors      map[string]int `json:"errors"`
	ElapsedS    float64        `json:"elapsed_s"`
	PerSecond   float64        `json:"heartbeats_per_s"`
	P50MS       float64        `json:"p50_ms"`
	P90MS       float64        `json:"p90_ms"`
	P99MS       float64        `json:"p99_ms"`
	P999MS      float64        `json:"p999_ms"`
	MaxMS       float64        `json:"max_ms"`
	MeanMS      float64        `json:"mean_ms"`
	ServerCPUS  float64        `json:"server_cpu_s,omitempty"`
	ServerCores float64        `json:"server_cores,omitempty"`
	LoadCPUS    float64        `json:"loadgen_cpu_s"`
	LoadCores   float64        `json:"loadgen_cores"`
	// MachineCores is how many cores the whole machine kept busy (from
	// /proc/stat); what the server and this generator do not account for
	// is other processes competing for the same cores.
	MachineCores float64 `json:"machine_cores"`
	OtherCores   float64 `json:"other_cores"`
	ServerRSSKB  int64   `json:"server_rss_kb,omitempty"`
	ServerHWMKB  int64   `json:"server_hwm_kb,omitempty"`
}

func runPhase(name string, c *client, agents []*agent, conc int, pick func() (int, bool), serverPID int) phaseResult {
	type workerOut struct {
		lats  []time.Duration
		kinds map[string]int
	}
	outs := make([]workerOut, conc)
	srvCPU0 := procCPU(serverPID)
	selfCPU0 := selfCPU()
	busy0 := machineBusy()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			o := workerOut{kinds: map[string]int{}}
			for {
				i, ok := pick()
				if !ok {
					break
				}
				ctx, cancel := context.WithTimeout(context.Background(), c.http.Timeout)
				r := c.beat(ctx, agents[i])
				cancel()
				o.kinds[r.kind]++
				if r.lat > 0 {
					o.lats = append(o.lats, r.lat)
				}
			}
			outs[w] = o
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := phaseResult{Name: name, Errors: map[string]int{}, ElapsedS: elapsed.Seconds()}
	var lats []time.Duration
	for _, o := range outs {
		lats = append(lats, o.lats...)
		for k, n := range o.kinds {
			res.Heartbeats += n
			if k == "ok" {
				res.OK += n
			} else {
				res.Errors[k] += n
			}
		}
	}
	res.PerSecond = float64(res.OK) / elapsed.Seconds()
	slices.Sort(lats)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	pct := func(p float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		i := int(float64(len(lats))*p+0.5) - 1
		return ms(lats[max(0, min(i, len(lats)-1))])
	}
	if len(lats) > 0 {
		var sum time.Duration
		for _, l := range lats {
			sum += l
		}
		res.P50MS, res.P90MS, res.P99MS, res.P999MS = pct(0.50), pct(0.90), pct(0.99), pct(0.999)
		res.MaxMS = ms(lats[len(lats)-1])
		res.MeanMS = ms(sum / time.Duration(len(lats)))
	}
	if serverPID > 0 {
		res.ServerCPUS = procCPU(serverPID) - srvCPU0
		res.ServerCores = res.ServerCPUS / elapsed.Seconds()
		res.ServerRSSKB, res.ServerHWMKB = procMem(serverPID)
	}
	res.LoadCPUS = selfCPU() - selfCPU0
	res.LoadCores = res.LoadCPUS / elapsed.Seconds()
	if b := machineBusy(); b > 0 && busy0 > 0 {
		res.MachineCores = (b - busy0) / elapsed.Seconds()
		if serverPID > 0 {
			res.OtherCores = max(0, res.MachineCores-res.ServerCores-res.LoadCores)
		}
	}
	return res
}

func load(o options, keys []*signing.SecretKey) error {
	o.server = strings.TrimRight(o.server, "/")
	hc := &http.Client{
		Timeout: o.timeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        o.concurrency,
			MaxIdleConnsPerHost: o.concurrency,
			MaxConnsPerHost:     o.concurrency,
			IdleConnTimeout:     30 * time.Second,
			DisableKeepAlives:   !o.keepAlive,
		},
	}
	pub, err := serverKey(hc, o.server)
	if err != nil {
		return err
	}
	c := &client{url: o.server, http: hc, serverKey: []*signing.PublicKey{pub}}
	agents := make([]*agent, len(keys))
	for i, k := range keys {
		agents[i] = newAgent(i, k)
	}
	fmt.Printf("fleetload: %d agents, server %s (key %s), concurrency %d, rate %s, keepalive %v\n",
		len(agents), o.server, pub.Name, o.concurrency, rateString(o.rate), o.keepAlive)

	var phases []phaseResult
	if o.warmup {
		var next atomic.Int64
		pick := func() (int, bool) {
			i := int(next.Add(1) - 1)
			return i, i < len(agents)
		}
		r := runPhase("warm-up (first heartbeat of every host)", c, agents, o.concurrency, pick, o.serverPID)
		printPhase(r)
		phases = append(phases, r)
	}

	var next atomic.Int64
	start := time.Now()
	end := start.Add(o.duration)
	var interval time.Duration
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) / o.rate)
	}
	pick := func() (int, bool) {
		k := next.Add(1) - 1
		if interval > 0 {
			at := start.Add(time.Duration(k) * interval)
			if !at.Before(end) {
				return 0, false
			}
			time.Sleep(time.Until(at))
		} else if !time.Now().Before(end) {
			return 0, false
		}
		return int(k % int64(len(agents))), true
	}
	r := runPhase(fmt.Sprintf("measured (%s, round-robin over %d hosts)", o.duration, len(agents)), c, agents, o.concurrency, pick, o.serverPID)
	printPhase(r)
	phases = append(phases, r)

	report := map[string]any{
		"server": o.server, "hosts": len(agents), "concurrency": o.concurrency, "rate": o.rate,
		"keepalive": o.keepAlive, "phases": phases,
	}
	if o.dbPath != "" {
		sizes := map[string]int64{}
		var total int64
		for _, suf := range []string{"", "-wal", "-shm"} {
			if st, err := os.Stat(o.dbPath + suf); err == nil {
				sizes[filepath.Base(o.dbPath+suf)] = st.Size()
				total += st.Size()
			}
		}
		fmt.Printf("database: %s total (", mib(total))
		names := make([]string, 0, len(sizes))
		for n := range sizes {
			names = append(names, n)
		}
		sort.Strings(names)
		for i, n := range names {
			if i > 0 {
				fmt.Print(", ")
			}
			fmt.Printf("%s %s", n, mib(sizes[n]))
		}
		fmt.Println(")")
		report["db_bytes"] = sizes
		report["db_total_bytes"] = total
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if r.OK == 0 {
		return errors.New("no heartbeat succeeded")
	}
	return nil
}

func rateString(r float64) string {
	if r <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s", r)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printPhase(r phaseResult) {
	fmt.Printf("\n== %s\n", r.Name)
	fmt.Printf("heartbeats      %d in %.2fs, %d ok: %.0f heartbeats/s\n", r.Heartbeats, r.ElapsedS, r.OK, r.PerSecond)
	if len(r.Errors) == 0 {
		fmt.Println("errors          none")
	} else {
		ks := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		parts := make([]string, len(ks))
		for i, k := range ks {
			parts[i] = fmt.Sprintf("%s: %d", k, r.Errors[k])
		}
		fmt.Println("errors          " + strings.Join(parts, ", "))
	}
	fmt.Printf("latency ms      p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (mean %.2f)\n", r.P50MS, r.P90MS, r.P99MS, r.P999MS, r.MaxMS, r.MeanMS)
	if r.ServerCPUS > 0 {
		fmt.Printf("server          %.1f CPU-s (%.2f cores), VmRSS %s, VmHWM %s\n", r.ServerCPUS, r.ServerCores, mib(r.ServerRSSKB<<10), mib(r.ServerHWMKB<<10))
	}
	fmt.Printf("load generator  %.1f CPU-s (%.2f cores)\n", r.LoadCPUS, r.LoadCores)
	if r.MachineCores > 0 {
		fmt.Printf("machine         %.2f of %d cores busy", r.MachineCores, runtime.NumCPU())
		if r.ServerCPUS > 0 {
			fmt.Printf(", %.2f of them by other processes", r.OtherCores)
		}
		fmt.Println()
	}
}

func serverKey(hc *http.Client, server string) (*signing.PublicKey, error) {
	resp, err := hc.Get(server + "/info")
	if err != nil {
		return nil, fmt.Errorf("GET /info: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /info: %s", resp.Status)
	}
	var info struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return nil, fmt.Errorf("GET /info: %w", err)
	}
	return signing.ParsePublicKey(info.PublicKey)
}

// procCPU returns a process's user+system CPU seconds from /proc, 0 when
// pid is 0 or unreadable.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// procMem returns VmRSS and VmHWM in KiB.
func procMem(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// machineBusy returns the CPU seconds all cores spent not idle since boot.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:8] { // user nice system idle iowait irq softirq
		n, _ := strconv.ParseFloat(v, 64)
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy / 100
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
