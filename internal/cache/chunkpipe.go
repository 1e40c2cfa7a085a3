package cache

import (
	"io"
	"sync"
)

// chunkPipe is an io.Pipe with room for a few chunks: the writer copies
// each write into a chunk and goes on while the reader is still busy with
// earlier ones, so two stages of one stream (receiving and decompressing
// an upload, say) run on two cores, each at its own pace. One writer, one
// reader.
type chunkPipe struct {
	ch   chan []byte
	done chan struct{} // closed when the reader stops
	werr error         // why the writer stopped; set before ch is closed
	rerr error         // why the reader stopped; set before done is closed
	once sync.Once
	cur  []byte
}

func newChunkPipe(chunks int) *chunkPipe {
	return &chunkPipe{ch: make(chan []byte, chunks), done: make(chan struct{})}
}

// Write copies p into a chunk for the reader; it fails once the reader has
// stopped.
func (c *chunkPipe) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	select {
	case <-c.done:
		return 0, c.rerr
	default:
	}
	b := make([]byte, len(p))
	copy(b, p)
	select {
	case c.ch <- b:
		return len(p), nil
	case <-c.done:
		return 0, c.rerr
	}
}

// closeWrite ends the stream: the reader gets err after the chunks sent,
// or io.EOF when err is nil. Call it once.
func (c *chunkPipe) closeWrite(err error) {
	c.werr = err
	close(c.ch)
}

func (c *chunkPipe) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		b, ok := <-c.ch
		if !ok {
			if c.werr != nil {
				return 0, c.werr
			}
			return 0, io.EOF
		}
		c.cur = b
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

// closeRead stops the reader: later writes fail with err, or
// io.ErrClosedPipe when err is nil.
func (c *chunkPipe) closeRead(err error) {
	c.once.Do(func() {
		if err == nil {
			err = io.ErrClosedPipe
		}
		c.rerr = err
		close(c.done)
	})
}
