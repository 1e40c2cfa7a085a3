package testsupport

import (
	"os"
	"slices"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestServerConfigTOML(t *testing.T) {
	opts := ServerOptions{
		Hostname:     "h",
		PollInterval: "5m",
		Repositories: []ServerRepository{{Name: "a", URL: `/tmp/we"ird\path` + "\t", Branch: "dev"}, {Name: "b", URL: "/srv/b"}},
	}
	c := WriteServerConfig(t, opts)
	var got struct {
		DataDir      string `toml:"data_dir"`
		KeyFile      string `toml:"key_file"`
		Bind         string `toml:"bind"`
		APIPort      int    `toml:"api_port"`
		CachePort    int    `toml:"cache_port"`
		PollInterval string `toml:"poll_interval"`
		Hostname     string `toml:"hostname"`
		Repositories []struct{ Name, URL, Branch string }
	}
	b, err := os.ReadFile(c.File)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := toml.Decode(string(b), &got); err != nil {
		t.Fatalf("%v in\n%s", err, b)
	}
	if got.DataDir != c.DataDir || got.KeyFile != c.KeyFile || got.Bind != "127.0.0.1" || got.APIPort != c.APIPort ||
		got.CachePort != c.CachePort || got.APIPort == got.CachePort || got.PollInterval != "5m" || got.Hostname != "h" {
		t.Errorf("config = %+v, want %+v", got, c)
	}
	if len(got.Repositories) != 2 || got.Repositories[0].URL != opts.Repositories[0].URL ||
		got.Repositories[0].Branch != "dev" || got.Repositories[1].Branch != "main" {
		t.Errorf("repositories = %+v", got.Repositories)
	}
}

func TestProcDescendants(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	// This process is below its parent.
	if !slices.Contains(procDescendants(os.Getppid()), os.Getpid()) {
		t.Errorf("procDescendants(%d) lacks this process %d", os.Getppid(), os.Getpid())
	}
	for stat, want := range map[string]int{
		"123 (sh) S 45 123 45 0": 45,
		"7 (a) b) (c) R 1 7 7 0": 1,
	} {
		if got, ok := procParent(stat); !ok || got != want {
			t.Errorf("procParent(%q) = %d, %v; want %d", stat, got, ok, want)
		}
	}
}
