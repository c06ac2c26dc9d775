package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hookNet is the network connection under a fake lib/pq: reads give one
// byte, or time out once a deadline set on it has passed; a non-zero
// SetReadDeadline can be held (block) to order it against the consumer.
type hookNet struct {
	net.Conn
	mu       sync.Mutex
	deadline time.Time
	block    chan struct{} // set before the goroutine that blocks starts
	blocked  chan struct{}
	cleared  chan struct{} // signalled on a zero SetReadDeadline
}

func (h *hookNet) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && h.block != nil {
		close(h.blocked)
		<-h.block
	}
	h.mu.Lock()
	h.deadline = t
	h.mu.Unlock()
	if t.IsZero() && h.cleared != nil {
		select {
		case h.cleared <- struct{}{}:
		default:
		}
	}
	return nil
}

func (h *hookNet) currentDeadline() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deadline
}

func (h *hookNet) Read(p []byte) (int, error) {
	if d := h.currentDeadline(); !d.IsZero() && time.Now().After(d) {
		return 0, timeoutError{}
	}
	p[0] = 'x'
	return 1, nil
}

func (h *hookNet) Close() error { return nil }

// sockConnector plays lib/pq behind jsonstream's dialer: Connect puts a
// sock around hookNet into the slot, as dialer.DialContext does, and
// every FETCH reads its reply from that sock.
type sockConnector struct {
	d   *scriptDB
	net *hookNet
	mu  sync.Mutex
	eof func() // called once by a FETCH's rows when they reach their end
}

func (c *sockConnector) Connect(ctx context.Context) (driver.Conn, error) {
	slot := ctx.Value(socketKey{}).(*socketSlot)
	s := &sock{Conn: c.net}
	slot.conn.Store(s)
	return &sockConn{scriptConn: scriptConn{d: c.d}, s: s, c: c}, nil
}
func (c *sockConnector) Driver() driver.Driver { return c.d }

type sockConn struct {
	scriptConn
	s *sock
	c *sockConnector
}

func (c *sockConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if strings.HasPrefix(query, "FETCH") {
		if _, err := c.s.Read(make([]byte, 1)); err != nil {
			return nil, err // what lib/pq returns when the reply's read fails
		}
	}
	r, err := c.scriptConn.QueryContext(ctx, query, args)
	if err != nil {
		return nil, err
	}
	return &eofHookRows{Rows: r, c: c.c}, nil
}

type eofHookRows struct {
	driver.Rows
	c *sockConnector
}

func (r *eofHookRows) Next(dest []driver.Value) error {
	err := r.Rows.Next(dest)
	if errors.Is(err, io.EOF) {
		r.c.mu.Lock()
		hook := r.c.eof
		r.c.eof = nil
		r.c.mu.Unlock()
		if hook != nil {
			hook()
		}
	}
	return err
}

// TestCursorInterruptNeverOutlivesRoundTrip: a Cancel that races the last
// batch's end never leaves a read deadline on the connection that goes
// back to the pool.
func TestCursorInterruptNeverOutlivesRoundTrip(t *testing.T) {
	d := &scriptDB{rows: 5}
	hn := &hookNet{}
	sc := &sockConnector{d: d, net: hn}
	c, err := NewConnector(sc, WithFetchSize(10))
	require.NoError(t, err)
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	defer db.Close()

	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs", s)
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		require.True(t, rows.Next())
	}
	canceled := make(chan error, 1)
	hn.cleared = make(chan struct{}, 1)
	block := make(chan struct{})
	sc.mu.Lock()
	sc.eof = func() {
		// The consumer is inside the last batch's Next, inFlight set:
		// a Cancel comes and its interrupt stalls before SetReadDeadline.
		hn.block, hn.blocked = block, make(chan struct{})
		go func() { canceled <- s.Cancel() }()
		<-hn.blocked
	}
	sc.mu.Unlock()
	done := make(chan bool, 1)
	go func() { done <- rows.Next() }()
	select {
	case <-hn.cleared: // finish() cleared the deadline and went on to COMMIT
	case <-time.After(200 * time.Millisecond): // the consumer waits for the interrupt
	}
	close(block) // the stalled interrupt goes on
	require.NoError(t, <-canceled)
	assert.False(t, <-done)
	_ = rows.Close()
	assert.Contains(t, d.statements(), "COMMIT")

	assert.True(t, hn.currentDeadline().IsZero(), "connection back in the pool with a read deadline armed (%v)", hn.currentDeadline())
	time.Sleep(20 * time.Millisecond)
	rows, err = db.Query("SELECT data FROM docs")
	if assert.NoError(t, err, "the next query on the pooled connection") {
		_ = rows.Close()
	}
}
