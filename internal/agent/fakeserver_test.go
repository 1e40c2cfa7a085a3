package agent

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// fakeServer is the server side of the heartbeat protocol, as a unit-test
// stand-in: it checks each heartbeat's signature, records it, and answers
// with what answer returns.
type fakeServer struct {
	t   *testing.T
	url string
	key *signing.SecretKey // the server key agents trust

	mu       sync.Mutex
	received []received
	// answer writes the response; nil means answerWith(approve("")).
	answer func(w http.ResponseWriter, hb fleetproto.Heartbeat)
}

// received is one heartbeat as the server saw it.
type received struct {
	hb       fleetproto.Heartbeat
	raw      map[string]any
	header   http.Header
	body     []byte
	verified error // VerifyHeartbeat with the key in the headers
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	key, err := signing.Generate("forge-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, key: key}
	hs := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(hs.Close)
	s.url = hs.URL
	return s
}

func (s *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != fleetproto.Path {
		http.Error(w, "wrong endpoint", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec := received{header: r.Header.Clone(), body: body}
	if err := json.Unmarshal(body, &rec.hb); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := json.Unmarshal(body, &rec.raw); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key, err := fleetproto.HeartbeatKey(r.Header)
	if err == nil {
		err = fleetproto.VerifyHeartbeat(r.Header, body, key)
	}
	rec.verified = err
	s.mu.Lock()
	s.received = append(s.received, rec)
	answer := s.answer
	s.mu.Unlock()
	if err != nil {
		http.Error(w, `{"detail":"bad signature"}`, http.StatusUnauthorized)
		return
	}
	if answer == nil {
		answer = s.answerWith(approve(""))
	}
	answer(w, rec.hb)
}

// setAnswer replaces how the server answers.
func (s *fakeServer) setAnswer(f func(w http.ResponseWriter, hb fleetproto.Heartbeat)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answer = f
}

// take returns and forgets the heartbeats received so far.
func (s *fakeServer) take() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.received
	s.received = nil
	return r
}

// approve is a reply that names target (deploy when target is not "").
func approve(target string) fleetproto.Reply {
	return fleetproto.Reply{Target: target, Deploy: target != "", Reason: "policy:test", Status: "approved"}
}

// answerWith answers 200 with reply, completed with the heartbeat's host,
// nonce and a timestamp, and signed by the server key.
func (s *fakeServer) answerWith(reply fleetproto.Reply) func(http.ResponseWriter, fleetproto.Heartbeat) {
	return s.answerSigned(reply, nil, func(h http.Header, body []byte) { fleetproto.SignReply(h, body, s.key) })
}

// answerSigned is answerWith with the reply edited by edit (after host and
// nonce are filled in) and signed by sign.
func (s *fakeServer) answerSigned(reply fleetproto.Reply, edit func(*fleetproto.Reply), sign func(http.Header, []byte)) func(http.ResponseWriter, fleetproto.Heartbeat) {
	return func(w http.ResponseWriter, hb fleetproto.Heartbeat) {
		r := reply
		r.Host, r.Nonce, r.Timestamp = hb.Host, hb.Nonce, time.Now().UTC()
		if edit != nil {
			edit(&r)
		}
		body, err := json.Marshal(r)
		if err != nil {
			s.t.Error(err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		sign(w.Header(), body)
		w.Write(body)
	}
}

// answerStatus answers code with a JSON body.
func answerStatus(code int, body string) func(http.ResponseWriter, fleetproto.Heartbeat) {
	return func(w http.ResponseWriter, _ fleetproto.Heartbeat) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

// testConfig is an agent configuration against s, with its own key file,
// current-system link (to systemA) and fact tree, and dry-run on (so no
// profile).
func testConfig(t *testing.T, s *fakeServer) Config {
	t.Helper()
	dir := t.TempDir()
	setCurrent(t, filepath.Join(dir, "current-system"), systemA)
	return Config{
		ServerURL:     s.url,
		Host:          "chesty",
		KeyFile:       filepath.Join(dir, "state", "agent-key"),
		ServerKeys:    []*signing.PublicKey{s.key.Public()},
		CurrentSystem: filepath.Join(dir, "current-system"),
		Profile:       filepath.Join(dir, "profiles", "system"),
		SysRoot:       server.build(t),
		DryRun:        true,
		Version:       "test",
		Logger:        testLogger(t),
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func setCurrent(t *testing.T, link, target string) {
	t.Helper()
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
