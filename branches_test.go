package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file pin branches of the stream that the broader
// tests pass through without noticing when they change: each one fails
// if the behaviour its name states goes away.

func TestStreamBeforeItsQueryStarts(t *testing.T) {
	s := mustStream(t)
	assert.ErrorIs(t, s.Pause(), ErrNotStarted)
	assert.ErrorIs(t, s.Resume(), ErrNotStarted)
	assert.ErrorIs(t, s.Cancel(), ErrNotStarted)
	assert.ErrorIs(t, s.SetPauseTimeout(time.Second), ErrNotStarted)
	assert.Equal(t, NotStarted, s.State())
	assert.Equal(t, "not_started", s.State().String())
	assert.Equal(t, Stats{}, s.Stats())

	// The refused calls left nothing behind: the query streams as usual.
	db, _ := openFake(t, countRows(2))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	assert.Equal(t, Running, s.State())
	n := 0
	for rows.Next() {
		n++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, 2, n)
	assert.Equal(t, Complete, s.State())
}

// pausedInFlight starts a Next whose inner Next waits for the server, then
// pauses the stream. A row the test then sends on feed is held back by
// the pause; closing feed ends the result.
func pausedInFlight(t *testing.T, ctx context.Context, opts ...Option) (*Stream, *sql.Rows, <-chan nextResult, chan string) {
	t.Helper()
	feed := make(chan string)
	fr := &fakeRows{feed: feed}
	db, _ := openFake(t, func(string) *fakeRows { return fr })
	s := mustStream(t, opts...)
	rows, err := db.QueryContext(ctx, "q", s)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rows.Close() })
	ch := nextAsync(rows)
	require.Eventually(t, func() bool { return fr.next.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, s.Pause())
	return s, rows, ch, feed
}

func TestHeldBackRowDeliveredOnceAfterResume(t *testing.T) {
	s, rows, ch, feed := pausedInFlight(t, context.Background())
	feed <- "held row"
	requireBlocked(t, ch)
	st := s.Stats()
	assert.Zero(t, st.Rows, "the held-back row was counted before it was delivered")
	assert.Zero(t, st.Bytes)
	assert.Zero(t, st.FirstRow)

	require.NoError(t, s.Resume())
	r := requireWithin(t, ch, time.Second)
	require.True(t, r.ok)
	require.NoError(t, r.err)
	assert.Equal(t, "held row", r.val)
	assert.Equal(t, int64(1), s.Stats().Rows)
	assert.Equal(t, int64(len("held row")), s.Stats().Bytes)

	close(feed)
	r = requireWithin(t, nextAsync(rows), time.Second)
	assert.False(t, r.ok)
	require.NoError(t, r.err)
	assert.Equal(t, Complete, s.State())
	assert.Equal(t, int64(1), s.Stats().Rows, "the held-back row was counted twice")
}

func TestHeldBackRowNotDeliveredWhenStreamFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		end  func(s *Stream, cancel context.CancelFunc) error
		want error
	}{
		{"Cancel", nil, func(s *Stream, _ context.CancelFunc) error { return s.Cancel() }, ErrCanceled},
		{"pause timeout", []Option{WithPauseTimeout(50 * time.Millisecond)},
			func(*Stream, context.CancelFunc) error { return nil }, ErrPauseTimeout},
		{"context", nil, func(_ *Stream, cancel context.CancelFunc) error { cancel(); return nil }, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, _, ch, feed := pausedInFlight(t, ctx, tc.opts...)
			feed <- "held row"
			require.NoError(t, tc.end(s, cancel))
			r := requireWithin(t, ch, 5*time.Second)
			assert.False(t, r.ok, "the held-back row %q was delivered by a failed stream", r.val)
			assert.ErrorIs(t, r.err, tc.want)
			assert.Equal(t, Failed, s.State())
			assert.Zero(t, s.Stats().Rows)
		})
	}
}

func TestPauseDuringLastNextEndsComplete(t *testing.T) {
	s, _, ch, feed := pausedInFlight(t, context.Background())
	close(feed) // the server's answer to the Next in flight: no more rows
	r := requireWithin(t, ch, 5*time.Second)
	assert.False(t, r.ok)
	require.NoError(t, r.err)
	st := s.Stats()
	assert.Equal(t, Complete, st.State)
	assert.Equal(t, int64(1), st.Pauses)
	assert.Zero(t, st.PausedNow, "the pause outlived the stream")
	time.Sleep(20 * time.Millisecond)
	later := s.Stats()
	assert.Zero(t, later.PausedNow)
	assert.Equal(t, st.PausedTotal, later.PausedTotal, "paused time grows after the end")
	assert.ErrorIs(t, s.Resume(), ErrStreamEnded)
}

// TestFirstFailureWins: a stream fails once, and Next reports the failure
// that came first even when a second one follows before Next returns.
func TestFirstFailureWins(t *testing.T) {
	// inFlight starts a driver-level Next that waits for the server. The
	// inner rows keep waiting after the cut (the row may be buffered) until
	// the test closes inner.fail: the read error the cut caused.
	inFlight := func(t *testing.T) (*rows, *sockRows, context.CancelFunc, <-chan driverNext) {
		sock := newFakeSock()
		inner := newSockRows(sock)
		inner.buffered = true
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		r := driverStream(t, ctx, inner, sock)
		ch := driverNextAsync(r)
		inner.inFlight(t, 1)
		return r, inner, cancel, ch
	}
	t.Run("Cancel, then the context", func(t *testing.T) {
		r, inner, cancel, ch := inFlight(t)
		require.NoError(t, r.Cancel())
		cancel()
		// The context's watch runs in a goroutine of its own: give it the
		// time to try to fail the stream a second time.
		time.Sleep(quiet)
		close(inner.fail)
		got := requireDriverNext(t, ch, 5*time.Second)
		assert.ErrorIs(t, got.err, ErrCanceled)
		assert.NotErrorIs(t, got.err, context.Canceled)
		assert.ErrorIs(t, r.Next(make([]driver.Value, 1)), ErrCanceled, "a later Next")
		assert.True(t, inner.sock.isClosed(), "Cancel did not cut the connection")
	})
	t.Run("the context, then Cancel", func(t *testing.T) {
		r, inner, cancel, ch := inFlight(t)
		cancel()
		require.Eventually(t, func() bool { return r.State() == Failed }, 5*time.Second, time.Millisecond,
			"the context's watch did not fail the stream")
		assert.ErrorIs(t, r.Cancel(), ErrStreamEnded)
		close(inner.fail)
		got := requireDriverNext(t, ch, 5*time.Second)
		assert.ErrorIs(t, got.err, context.Canceled)
		assert.NotErrorIs(t, got.err, ErrCanceled)
		assert.ErrorIs(t, r.Next(make([]driver.Value, 1)), context.Canceled, "a later Next")
		assert.True(t, inner.sock.isClosed(), "the context's end did not cut the connection")
	})
}

// TestCutDuringNextYieldsNoRow counts the rows the consumer gets, not the
// loops: the row a cut interrupts must not come out, even when it was
// already in the client's buffer.
func TestCutDuringNextYieldsNoRow(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		name := "the cut ends the read"
		if buffered {
			name = "the row was already buffered"
		}
		t.Run(name, func(t *testing.T) {
			var inner *sockRows
			db, _ := openSockScript(t, func(sock *fakeSock) driver.Rows {
				inner = newSockRows(sock)
				inner.buffered = buffered
				return inner
			})
			s := mustStream(t)
			rows, err := db.Query("q", s)
			require.NoError(t, err)
			defer rows.Close()
			got := make(chan int, 1)
			go func() {
				n := 0
				for rows.Next() {
					n++
				}
				got <- n
			}()
			inner.inFlight(t, 1)
			require.NoError(t, s.Cancel())
			require.True(t, inner.sock.isClosed(), "Cancel did not cut the connection")
			if buffered {
				inner.feed <- "buffered row"
			}
			select {
			case n := <-got:
				assert.Zero(t, n, "a row came out of the cut stream")
			case <-time.After(5 * time.Second):
				t.Fatal("Next did not return after the cut")
			}
			assert.ErrorIs(t, rows.Err(), ErrCanceled)
			assert.Zero(t, s.Stats().Rows)
			require.NoError(t, rows.Close())
		})
	}
}

func TestClosingPausedStreamEndsPause(t *testing.T) {
	inner := &fakeRows{n: 5}
	r := driverStream(t, context.Background(), inner, nil)
	dest := make([]driver.Value, 1)
	require.NoError(t, r.Next(dest))
	require.NoError(t, r.Pause())
	ch := driverNextAsync(r)
	select {
	case got := <-ch:
		t.Fatalf("Next returned while paused: %+v", got)
	case <-time.After(quiet):
	}

	require.NoError(t, r.Close())
	got := requireDriverNext(t, ch, 5*time.Second)
	assert.ErrorIs(t, got.err, ErrRowsClosed, "the Next blocked in the pause")
	assert.Nil(t, got.val)
	st := r.Stats()
	assert.Equal(t, Closed, st.State)
	assert.Zero(t, st.PausedNow, "the pause outlived Close")
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, st.PausedTotal, r.Stats().PausedTotal, "paused time grows after Close")

	calls := inner.next.Load()
	assert.ErrorIs(t, r.Next(dest), ErrRowsClosed, "Next after Close")
	assert.Equal(t, calls, inner.next.Load(), "the inner Next was called after Close")
}

func TestResumeOnEndedStreamThatNeverPaused(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		want State
		end  func(*sql.Rows)
		rows func(string) *fakeRows
	}{
		{Complete, func(rows *sql.Rows) {
			for rows.Next() {
			}
		}, countRows(2)},
		{Failed, func(rows *sql.Rows) {
			for rows.Next() {
			}
		}, func(string) *fakeRows { return &fakeRows{n: 1, err: boom} }},
		{Closed, func(rows *sql.Rows) { _ = rows.Close() }, countRows(5)},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			db, _ := openFake(t, tc.rows)
			s := mustStream(t)
			rows, err := db.Query("q", s)
			require.NoError(t, err)
			defer rows.Close()
			require.True(t, rows.Next())
			tc.end(rows)
			require.Nil(t, s.bound.Load().pause.Load(), "the stream paused")
			err = s.Resume()
			assert.ErrorIs(t, err, ErrStreamEnded)
			assert.Equal(t, tc.want, s.State())
		})
	}
}

func TestFirstRowSetByFirstRowOnly(t *testing.T) {
	t.Run("one-row result", func(t *testing.T) {
		db, _ := openFake(t, countRows(1))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		defer rows.Close()
		assert.Zero(t, s.Stats().FirstRow, "before the first row")
		require.True(t, rows.Next())
		first := s.Stats().FirstRow
		assert.Positive(t, first)
		assert.False(t, rows.Next())
		assert.Equal(t, first, s.Stats().FirstRow)
	})
	t.Run("later rows leave it", func(t *testing.T) {
		db, _ := openFake(t, countRows(3))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		defer rows.Close()
		require.True(t, rows.Next())
		first := s.Stats().FirstRow
		require.Positive(t, first)
		time.Sleep(5 * time.Millisecond) // any later row would read a later time
		for rows.Next() {
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, int64(3), s.Stats().Rows)
		assert.Equal(t, first, s.Stats().FirstRow)
	})
}

// TestRejectedStatementStreamNeverReachesArgumentlessQuery: database/sql
// checks a prepared statement's arguments (the Stream is taken out) and
// then refuses to run it, one argument short. The Stream it left must not
// bind to the next statement on the connection that has no arguments to
// check.
func TestRejectedStatementStreamNeverReachesArgumentlessQuery(t *testing.T) {
	ctx := context.Background()
	db, _ := openFake(t, countRows(3))
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // the test only reads
	st, err := tx.PrepareContext(ctx, "q ?")
	require.NoError(t, err)
	s := mustStream(t)
	_, err = st.QueryContext(ctx, s)
	require.Error(t, err, "a statement one argument short ran")

	rows, err := tx.QueryContext(ctx, "other query")
	require.NoError(t, err)
	require.NoError(t, rows.Close())
	assert.False(t, s.Started(), "bound to an argument-less query")

	_, err = st.QueryContext(ctx, s)
	require.Error(t, err)
	plain, err := tx.PrepareContext(ctx, "other statement")
	require.NoError(t, err)
	rows, err = plain.QueryContext(ctx)
	require.NoError(t, err)
	require.NoError(t, rows.Close())
	assert.False(t, s.Started(), "bound to an argument-less prepared statement")
}

// closeErrRows are fake rows whose Close fails.
type closeErrRows struct {
	*fakeRows
	err error
}

func (r closeErrRows) Close() error {
	_ = r.fakeRows.Close()
	return r.err
}

func TestCloseCancelOnUndialedConnReturnsInnerCloseError(t *testing.T) {
	boom := errors.New("inner Close failed")
	var inner closeErrRows
	sc := &sockScriptConnector{undialed: true, newRows: func(*fakeSock) driver.Rows {
		inner = closeErrRows{&fakeRows{n: 5}, boom}
		return inner
	}}
	c, err := NewConnector(sc, WithCloseMode(CloseCut))
	require.NoError(t, err)
	db := sql.OpenDB(c)
	defer db.Close()
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	assert.ErrorIs(t, rows.Close(), boom)
	assert.Equal(t, int64(1), inner.close.Load())
	assert.Equal(t, Closed, s.State())
}

// TestCutConnectionIsNeverReused: after a cut, jsonstream's conn reports
// itself bad whatever the inner conn says, which still thinks all is well.
func TestCutConnectionIsNeverReused(t *testing.T) {
	ctx := context.Background()
	t.Run("driver level", func(t *testing.T) {
		spy := newSpy(&fakeDriver{newRows: countRows(5)})
		sock := newFakeSock()
		s := defaultSettings()
		c := newConn(spy, &s, sock.netConn())
		require.NoError(t, c.ResetSession(ctx))
		require.True(t, c.IsValid())
		dr, err := c.QueryContext(ctx, "q", nil)
		require.NoError(t, err)
		require.NoError(t, dr.(Controller).Cancel())
		require.True(t, sock.isClosed(), "Cancel did not cut")
		require.NoError(t, dr.Close())

		assert.ErrorIs(t, c.ResetSession(ctx), driver.ErrBadConn)
		assert.False(t, c.IsValid())
		require.NoError(t, spy.ResetSession(ctx), "the inner conn would be reused")
		require.True(t, spy.IsValid(), "the inner conn would be reused")
	})
	t.Run("through database/sql", func(t *testing.T) {
		queries := 0
		db, sc := openSockScript(t, func(sock *fakeSock) driver.Rows {
			r := newSockRows(sock)
			if queries++; queries > 1 {
				close(r.feed) // the next query's result is empty
			}
			return r
		})
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.NoError(t, s.Cancel())
		require.NoError(t, rows.Close())
		rows, err = db.Query("q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		conns := sc.opened()
		require.Len(t, conns, 2, "the cut connection served the next query")
		assert.True(t, conns[0].closed.Load(), "the cut connection was not closed")
	})
}
