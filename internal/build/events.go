package build

import "sync"

// Event says a build changed: queued, started, a result, finished.
type Event struct {
	Repository string `json:"repository"`
	BuildID    int64  `json:"build_id"`
	Status     string `json:"status"`
}

// hub fans events out to subscribers. A slow subscriber loses events rather
// than stalling builds; the web page refetches state on each event anyway.
type hub struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func newHub() *hub { return &hub{subs: make(map[chan Event]struct{})} }

func (h *hub) subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
		})
	}
}

func (h *hub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
		}
	}
}
