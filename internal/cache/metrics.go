package cache

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crystal_forge_cache_requests_total",
			Help: "Binary cache requests by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "crystal_forge_cache_response_bytes_total",
			Help: "Response body bytes sent by the binary cache, by endpoint.",
		}, []string{"endpoint"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "crystal_forge_cache_request_duration_seconds",
			Help:    "Time to answer a binary cache request, body included, by endpoint.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 2, 10, 60},
		}, []string{"endpoint"}),
	}
	reg.MustRegister(m.requests, m.bytes, m.latency)
	return m
}

// instrument wraps a handler with the endpoint's metrics. The counters are
// resolved once here, not per request; so are those of the usual codes.
func (s *Server) instrument(endpoint string, h handlerFunc) handlerFunc {
	bytes := s.metrics.bytes.WithLabelValues(endpoint)
	latency := s.metrics.latency.WithLabelValues(endpoint)
	requests := s.metrics.requests.MustCurryWith(prometheus.Labels{"endpoint": endpoint})
	ok := requests.WithLabelValues("200")
	notFound := requests.WithLabelValues("404")
	return func(w http.ResponseWriter, r *http.Request, name string) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			// Count aborted streams too, then let the server see the panic.
			latency.Observe(time.Since(start).Seconds())
			bytes.Add(float64(rec.n))
			switch rec.code {
			case http.StatusOK:
				ok.Inc()
			case http.StatusNotFound:
				notFound.Inc()
			default:
				requests.WithLabelValues(strconv.Itoa(rec.code)).Inc()
			}
		}()
		h(rec, r, name)
	}
}

// recorder notes status and size. It forwards ReadFrom so that NAR file
// contents still reach the socket with sendfile.
type recorder struct {
	http.ResponseWriter
	code        int
	n           int64
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.code, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	r.wroteHeader = true
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{r.ResponseWriter}, src)
	}
	r.n += n
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
