package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Helpers of the tests that need no server: streams over the fake
// driver, the observer recorder, waiting for a blocked Next.

// openScript returns a DB of one connection at most over d, with opts as
// connector settings.
func openScript(t *testing.T, d *fakeDriver, opts ...Option) *sql.DB {
	t.Helper()
	c, err := NewConnector(d, opts...)
	require.NoError(t, err)
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func drainRows(t *testing.T, rows *sql.Rows) int {
	t.Helper()
	n := 0
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	return n
}

// recorder is an Observer that keeps every event.
type recorder struct {
	mu     sync.Mutex // guards events; events come from several goroutines
	events []Event
}

func (r *recorder) ObserveStream(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func (r *recorder) kinds() []EventKind {
	var k []EventKind
	for _, e := range r.all() {
		k = append(k, e.Kind)
	}
	return k
}

// last returns the last event of kind, failing the test without one.
func (r *recorder) last(t *testing.T, kind EventKind) Event {
	t.Helper()
	ev := r.all()
	for i := len(ev) - 1; i >= 0; i-- {
		if ev[i].Kind == kind {
			return ev[i]
		}
	}
	t.Fatalf("no %v event in %v", kind, r.kinds())
	return Event{}
}

// ended returns the stream's EventEnded, waiting a little for it when
// database/sql closes the rows from its own goroutine.
func (r *recorder) ended(t *testing.T) Event {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, e := range r.all() {
			if e.Kind == EventEnded {
				return true
			}
		}
		return false
	}, time.Second, time.Millisecond, "no EventEnded")
	return r.last(t, EventEnded)
}

// openFake returns a DB over a fakeDriver whose queries return what
// newRows makes, with opts as connector settings.
func openFake(t testing.TB, newRows func(string) *fakeRows, opts ...Option) (*sql.DB, *fakeDriver) {
	t.Helper()
	d := &fakeDriver{newRows: newRows}
	c, err := NewConnector(d, opts...)
	require.NoError(t, err)
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	return db, d
}

// nextAsync calls rows.Next (and Scan) in a goroutine.
func nextAsync(rows *sql.Rows) <-chan nextResult {
	ch := make(chan nextResult, 1)
	go func() {
		var r nextResult
		if r.ok = rows.Next(); r.ok {
			r.err = rows.Scan(&r.val)
		} else {
			r.err = rows.Err()
		}
		ch <- r
	}()
	return ch
}

func requireWithin(t *testing.T, ch <-chan nextResult, d time.Duration) nextResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("Next did not return within %v", d)
		return nextResult{}
	}
}

func mustStream(t testing.TB, opts ...Option) *Stream {
	t.Helper()
	s, err := NewStream(opts...)
	require.NoError(t, err)
	return s
}

// driverConn is a jsonstream conn at the driver level, with no
// database/sql in between, over a conn of d whose socket is fs (nil: a
// conn jsonstream did not dial), with opts.
func driverConn(t testing.TB, d *fakeDriver, fs *fakeSock, opts ...Option) *conn {
	t.Helper()
	s := defaultSettings()
	require.NoError(t, s.apply(opts))
	ic := d.openConn(fs)
	return newConn(ic.handOut(), &s, ic.wire)
}

// driverStream runs one query at the driver level, on a jsonstream conn
// whose socket is fs (nil: a conn jsonstream did not dial) and whose
// inner query returns inner. It returns the stream.
func driverStream(t testing.TB, ctx context.Context, inner *fakeRows, fs *fakeSock, opts ...Option) *rows {
	t.Helper()
	c := driverConn(t, &fakeDriver{newRows: func(string) *fakeRows { return inner }}, fs, opts...)
	dr, err := c.QueryContext(ctx, "SELECT q", nil) // a read: a write is never cut
	require.NoError(t, err)
	r := dr.(*rows)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// driverNext is what one driver-level Next gave.
type driverNext struct {
	val driver.Value
	err error
}

// driverNextAsync calls the driver-level Next in a goroutine.
func driverNextAsync(r driver.Rows) <-chan driverNext {
	ch := make(chan driverNext, 1)
	go func() {
		dest := make([]driver.Value, 1)
		err := r.Next(dest)
		ch <- driverNext{dest[0], err}
	}()
	return ch
}

func requireDriverNext(t *testing.T, ch <-chan driverNext, d time.Duration) driverNext {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the driver-level Next did not return within %v", d)
		return driverNext{}
	}
}
