package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wake is how long a blocked Next may take to return once it is released:
// at once, which on a loaded 2-core machine under the race detector is
// well under this.
const wake = 250 * time.Millisecond

// quiet is how long a test waits to see that something does not happen.
const quiet = 100 * time.Millisecond

// nextResult is what one rows.Next call gave.
type nextResult struct {
	ok  bool
	val string
	err error
}

func requireBlocked(t *testing.T, ch <-chan nextResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("Next returned while paused: %+v", r)
	case <-time.After(quiet):
	}
}

func TestStateStrings(t *testing.T) {
	want := map[State]string{Running: "running", Paused: "paused", Complete: "complete", Failed: "failed", Closed: "closed", State(9): "State(9)"}
	for s, name := range want {
		assert.Equal(t, name, s.String())
	}
}

func TestPauseBlocksNextAndInnerNext(t *testing.T) {
	fr := &fakeRows{n: 10}
	db, _ := openFake(t, func(string) *fakeRows { return fr })
	s := mustStream(t)
	rows, err := db.QueryContext(context.Background(), "q", s)
	require.NoError(t, err)
	defer rows.Close()

	var got []string
	for i := 0; i < 3; i++ {
		require.True(t, rows.Next())
		var v string
		require.NoError(t, rows.Scan(&v))
		got = append(got, v)
	}
	require.NoError(t, s.Pause())
	assert.Equal(t, Paused, s.State())
	calls := fr.next.Load()

	ch := nextAsync(rows)
	requireBlocked(t, ch)
	assert.Equal(t, calls, fr.next.Load(), "inner Next called while paused")

	start := time.Now()
	require.NoError(t, s.Resume())
	r := requireWithin(t, ch, wake)
	t.Logf("Next returned %v after Resume", time.Since(start))
	require.True(t, r.ok)
	require.NoError(t, r.err)
	got = append(got, r.val)
	for rows.Next() {
		var v string
		require.NoError(t, rows.Scan(&v))
		got = append(got, v)
	}
	require.NoError(t, rows.Err())
	want := make([]string, 10)
	for i := range want {
		want[i] = rowText(i)
	}
	assert.Equal(t, want, got, "every row once, in order")
	assert.Equal(t, Complete, s.State())
}

func TestPauseHoldsRowAlreadyOnItsWay(t *testing.T) {
	feed := make(chan string)
	fr := &fakeRows{feed: feed}
	db, _ := openFake(t, func(string) *fakeRows { return fr })
	s := mustStream(t)
	rows, err := db.QueryContext(context.Background(), "q", s)
	require.NoError(t, err)
	defer rows.Close()

	ch := nextAsync(rows)
	require.Eventually(t, func() bool { return fr.next.Load() == 1 }, time.Second, time.Millisecond)
	require.NoError(t, s.Pause()) // the inner Next is waiting for the server
	feed <- "late row"
	requireBlocked(t, ch)
	require.NoError(t, s.Resume())
	r := requireWithin(t, ch, wake)
	assert.Equal(t, "late row", r.val)
	close(feed)
	assert.False(t, rows.Next())
	assert.Equal(t, int64(2), fr.next.Load())
}

func TestPauseAndResumeAreIdempotentAndNonBlocking(t *testing.T) {
	db, _ := openFake(t, countRows(5))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()

	start := time.Now()
	require.NoError(t, s.Resume()) // running: nothing to do
	require.NoError(t, s.Pause())
	require.NoError(t, s.Pause())
	assert.Equal(t, Paused, s.State())
	require.NoError(t, s.Resume())
	require.NoError(t, s.Resume())
	assert.Equal(t, Running, s.State())
	assert.Less(t, time.Since(start), wake)
	assert.Equal(t, int64(1), s.Stats().Pauses, "a second Pause on a paused stream is not a new pause")
}

func TestBlockedNextWakesUp(t *testing.T) {
	cases := []struct {
		name    string
		opts    []Option
		ctx     func() (context.Context, context.CancelFunc)
		release func(s *Stream, cancel context.CancelFunc)
		want    error
	}{
		{
			name:    "context canceled",
			release: func(_ *Stream, cancel context.CancelFunc) { cancel() },
			want:    context.Canceled,
		},
		{
			name: "context deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), quiet+20*time.Millisecond)
			},
			release: func(*Stream, context.CancelFunc) {},
			want:    context.DeadlineExceeded,
		},
		{
			name:    "Cancel",
			release: func(s *Stream, _ context.CancelFunc) { require.NoError(t, s.Cancel()) },
			want:    ErrCanceled,
		},
		{
			name:    "pause timeout",
			opts:    []Option{WithPauseTimeout(quiet + 20*time.Millisecond)},
			release: func(*Stream, context.CancelFunc) {},
			want:    ErrPauseTimeout,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := openFake(t, countRows(10))
			ctx, cancel := context.WithCancel(context.Background())
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			s := mustStream(t, tc.opts...)
			rows, err := db.QueryContext(ctx, "q", s)
			require.NoError(t, err)
			defer rows.Close()
			require.True(t, rows.Next())
			require.NoError(t, s.Pause())
			ch := nextAsync(rows)
			requireBlocked(t, ch)
			tc.release(s, cancel)
			r := requireWithin(t, ch, 20*time.Millisecond+wake)
			assert.False(t, r.ok)
			assert.ErrorIs(t, r.err, tc.want)
			assert.Equal(t, Failed, s.State())
			assert.ErrorIs(t, s.Resume(), ErrStreamEnded)
		})
	}
}

func TestPauseTimeoutResumeAction(t *testing.T) {
	db, _ := openFake(t, countRows(3))
	s := mustStream(t, WithPauseTimeout(30*time.Millisecond), WithPauseTimeoutAction(ResumeOnPauseTimeout))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	require.NoError(t, s.Pause())
	r := requireWithin(t, nextAsync(rows), 30*time.Millisecond+wake)
	require.True(t, r.ok)
	assert.Equal(t, rowText(0), r.val)
	st := s.Stats()
	assert.Equal(t, int64(1), st.PauseTimeouts)
	assert.Equal(t, Running, st.State)
	assert.GreaterOrEqual(t, st.PausedTotal, 30*time.Millisecond)
}

func TestPauseTimeoutDefaultsAndOverrides(t *testing.T) {
	// Connector default applies to a stream with no options of its own.
	db, _ := openFake(t, countRows(3), WithPauseTimeout(20*time.Millisecond))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	require.NoError(t, s.Pause())
	r := requireWithin(t, nextAsync(rows), 20*time.Millisecond+wake)
	assert.ErrorIs(t, r.err, ErrPauseTimeout)
	require.NoError(t, rows.Close())

	// A Stream's option overrides it; SetPauseTimeout changes later pauses.
	s = mustStream(t, WithPauseTimeout(0))
	rows, err = db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	requireBlocked(t, ch)
	require.NoError(t, s.SetPauseTimeout(10*time.Millisecond))
	requireBlocked(t, ch) // the current pause keeps its (absent) bound
	require.NoError(t, s.Resume())
	requireWithin(t, ch, wake)
	require.NoError(t, s.Pause())
	r = requireWithin(t, nextAsync(rows), 10*time.Millisecond+wake)
	assert.ErrorIs(t, r.err, ErrPauseTimeout)
	assert.ErrorIs(t, s.SetPauseTimeout(-time.Second), ErrInvalidOption)
}

func TestNoTimeoutUnlessSet(t *testing.T) {
	db, _ := openFake(t, countRows(3))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	require.NoError(t, s.Pause())
	ch := nextAsync(rows)
	time.Sleep(3 * quiet)
	requireBlocked(t, ch)
	require.NoError(t, s.Resume())
	requireWithin(t, ch, wake)
}

func TestEndedStreamRefusesControl(t *testing.T) {
	check := func(t *testing.T, s *Stream, want State) {
		t.Helper()
		for name, call := range map[string]func() error{"Pause": s.Pause, "Resume": s.Resume, "Cancel": s.Cancel} {
			err := call()
			assert.ErrorIs(t, err, ErrStreamEnded, name)
			assert.Contains(t, err.Error(), want.String(), name)
			assert.Equal(t, want, s.State(), "%s changed the state", name)
		}
	}
	t.Run("complete", func(t *testing.T) {
		db, _ := openFake(t, countRows(2))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		for rows.Next() {
		}
		check(t, s, Complete)
		require.NoError(t, rows.Close())
		check(t, s, Complete)
	})
	t.Run("failed", func(t *testing.T) {
		boom := errors.New("boom")
		db, _ := openFake(t, func(string) *fakeRows { return &fakeRows{n: 1, err: boom} })
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		for rows.Next() {
		}
		assert.Same(t, boom, rows.Err(), "the inner error passes through unchanged")
		check(t, s, Failed)
	})
	t.Run("closed", func(t *testing.T) {
		db, _ := openFake(t, countRows(5))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Close())
		check(t, s, Closed)
	})
}

func TestStats(t *testing.T) {
	db, _ := openFake(t, countRows(4))
	s := mustStream(t)
	assert.Equal(t, Stats{}, s.Stats())
	assert.False(t, s.Started())
	assert.ErrorIs(t, s.Pause(), ErrNotStarted)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	assert.True(t, s.Started())
	require.True(t, rows.Next())
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	time.Sleep(20 * time.Millisecond)
	st := s.Stats()
	assert.Equal(t, Paused, st.State)
	assert.Equal(t, int64(2), st.Rows)
	assert.Equal(t, int64(len(rowText(0))+len(rowText(1))), st.Bytes)
	assert.Equal(t, int64(1), st.Pauses)
	assert.GreaterOrEqual(t, st.PausedNow, 20*time.Millisecond)
	assert.Equal(t, st.PausedNow, st.PausedTotal)
	assert.Positive(t, st.FirstRow)
	require.NoError(t, s.Resume())
	st = s.Stats()
	assert.Zero(t, st.PausedNow)
	assert.GreaterOrEqual(t, st.PausedTotal, 20*time.Millisecond)
}

func TestClosePausedStream(t *testing.T) {
	t.Run("by the consumer", func(t *testing.T) {
		db, _ := openFake(t, countRows(5))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		done := make(chan error, 1)
		go func() { done <- rows.Close() }()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(time.Second):
			t.Fatal("Close of a paused stream blocked")
		}
		assert.Equal(t, Closed, s.State())
	})
	t.Run("by database/sql when the context ends", func(t *testing.T) {
		db, _ := openFake(t, countRows(5))
		ctx, cancel := context.WithCancel(context.Background())
		s := mustStream(t)
		rows, err := db.QueryContext(ctx, "q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		cancel() // database/sql closes the rows from its own goroutine
		require.Eventually(t, func() bool { return s.State().final() }, time.Second, time.Millisecond)
		assert.False(t, rows.Next())
		assert.ErrorIs(t, rows.Err(), context.Canceled)
	})
}

func TestPauseMachineryAllocatedOnFirstPause(t *testing.T) {
	db, _ := openFake(t, countRows(5))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	r := s.bound.Load()
	require.True(t, rows.Next())
	assert.Nil(t, r.pause.Load(), "no pause machinery before the first Pause")
	_ = s.Stats()
	_ = s.Resume()
	assert.Nil(t, r.pause.Load(), "Stats and Resume must not allocate it")
	require.NoError(t, s.Pause())
	assert.NotNil(t, r.pause.Load())
}

// TestConcurrentControl drives Pause, Resume, State and Stats from several
// goroutines while the consumer reads and closes; every row it gets must
// come exactly once and in order. Run with -race.
func TestConcurrentControl(t *testing.T) {
	iterations := 300
	if testing.Short() {
		iterations = 60
	}
	var pauses int64
	for it := 0; it < iterations; it++ {
		seed := uint64(it)
		rng := rand.New(rand.NewPCG(seed, 7))
		n := 50 + rng.IntN(200)
		stopAt := -1
		if rng.IntN(3) == 0 {
			stopAt = 1 + rng.IntN(n-1) // close early
		}
		db, _ := openFake(t, countRows(n))
		s := mustStream(t)
		rows, err := db.QueryContext(context.Background(), "q", s)
		require.NoError(t, err)

		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func(g int) { // a controller; stopped by close(stop)
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, uint64(g)))
				for {
					select {
					case <-stop:
						return
					default:
					}
					switch r.IntN(4) {
					case 0:
						if err := s.Pause(); err != nil && !errors.Is(err, ErrStreamEnded) {
							t.Errorf("Pause: %v", err)
						}
					case 1:
						if err := s.Resume(); err != nil && !errors.Is(err, ErrStreamEnded) {
							t.Errorf("Resume: %v", err)
						}
					case 2:
						_ = s.State()
					case 3:
						_ = s.Stats()
					}
					time.Sleep(time.Duration(r.IntN(50)) * time.Microsecond)
				}
			}(g)
		}

		got := 0
		for rows.Next() {
			var v string
			require.NoError(t, rows.Scan(&v))
			require.Equal(t, rowText(got), v, "seed %d", seed)
			got++
			if got == stopAt {
				break
			}
			if got%16 == 0 {
				_ = s.Resume() // make progress even if the controllers keep pausing
			}
			if got%16 == 8 {
				time.Sleep(20 * time.Microsecond) // let the controllers in
			}
		}
		close(stop)
		wg.Wait()
		_ = s.Resume()
		require.NoError(t, rows.Err(), "seed %d", seed)
		require.NoError(t, rows.Close())
		if stopAt < 0 {
			require.Equal(t, n, got, "seed %d", seed)
			require.Equal(t, Complete, s.State())
		} else {
			require.Equal(t, stopAt, got)
			require.Equal(t, Closed, s.State())
		}
		require.Equal(t, int64(got), s.Stats().Rows, fmt.Sprint("seed ", seed))
		pauses += s.Stats().Pauses
		_ = db.Close()
	}
	t.Logf("%d pauses over %d streams", pauses, iterations)
	require.Greater(t, pauses, int64(iterations), "the controllers hardly paused: the test proves nothing")
}

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
	inFlight := func(t *testing.T) (*rows, *fakeRows, context.CancelFunc, <-chan driverNext) {
		sock := newFakeSock()
		inner := newFeedRows()
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
			var inner *fakeRows
			d := &fakeDriver{dialed: true, newRows: func(string) *fakeRows {
				inner = newFeedRows()
				inner.buffered = buffered
				return inner
			}}
			db := openScript(t, d)
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

func TestCloseCancelOnUndialedConnReturnsInnerCloseError(t *testing.T) {
	boom := errors.New("inner Close failed")
	var inner *fakeRows
	d := &fakeDriver{newRows: func(string) *fakeRows { // not dialed: jsonstream cannot cut
		inner = &fakeRows{n: 5, closeErr: boom}
		return inner
	}}
	c, err := NewConnector(d, WithCloseMode(CloseCut))
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
		ic, err := (&fakeDriver{newRows: countRows(5), full: true}).Open("")
		require.NoError(t, err)
		spy := ic.(*fakeConn)
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
		d := &fakeDriver{dialed: true, newRows: func(string) *fakeRows {
			r := newFeedRows()
			if queries++; queries > 1 {
				close(r.feed) // the next query's result is empty
			}
			return r
		}}
		db := openScript(t, d)
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.NoError(t, s.Cancel())
		require.NoError(t, rows.Close())
		rows, err = db.Query("q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		conns := d.opened()
		require.Len(t, conns, 2, "the cut connection served the next query")
		assert.True(t, conns[0].closed.Load(), "the cut connection was not closed")
	})
}
