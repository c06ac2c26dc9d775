package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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

type ctxKey struct{}

func TestObserverEventsOfAPausedStream(t *testing.T) {
	rec := &recorder{}
	db, _ := openFake(t, countRows(3), WithObserver(rec))
	s := mustStream(t)
	ctx := context.WithValue(context.Background(), ctxKey{}, "the query's")
	rows, err := db.QueryContext(ctx, "q", s)
	require.NoError(t, err)
	assert.Equal(t, []EventKind{EventStarted}, rec.kinds())

	require.True(t, rows.Next())
	first := rec.last(t, EventFirstRow)
	assert.Equal(t, int64(1), first.Stats.Rows)
	assert.Positive(t, first.Stats.FirstRow)

	require.NoError(t, s.Pause())
	require.NoError(t, s.Pause(), "a second Pause pauses nothing")
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, s.Resume())
	require.NoError(t, s.Resume(), "a second Resume resumes nothing")
	resumed := rec.last(t, EventResumed)
	assert.GreaterOrEqual(t, resumed.Paused, 20*time.Millisecond)
	assert.Equal(t, resumed.Paused, resumed.Stats.PausedTotal)
	assert.Equal(t, Running, resumed.Stats.State)

	for rows.Next() {
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())

	assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventResumed, EventEnded}, rec.kinds())
	for _, e := range rec.all() {
		assert.Equal(t, "the query's", e.Context.Value(ctxKey{}), "%v: the query's context", e.Kind)
		assert.Equal(t, ModeSingle, e.Mode)
		assert.Empty(t, e.Query, "no query text unless asked for")
	}
	end := rec.last(t, EventEnded)
	assert.Equal(t, OutcomeComplete, end.Outcome)
	assert.Equal(t, Complete, end.Stats.State)
	assert.Equal(t, int64(3), end.Stats.Rows)
	assert.Equal(t, int64(1), end.Stats.Pauses)
	assert.False(t, end.EndedPaused)
	assert.False(t, end.ConnCut)
	assert.NoError(t, end.Err)
}

// TestObserverOutcomes ends a stream every way the fake driver allows and
// checks the EventEnded each gives.
func TestObserverOutcomes(t *testing.T) {
	errServer := errors.New("fake: server error")
	for _, tc := range []struct {
		name        string
		opts        []Option
		rows        func(string) *fakeRows
		run         func(t *testing.T, rows *sql.Rows, s *Stream, cancel context.CancelFunc)
		outcome     Outcome
		state       State
		err         error
		endedPaused bool
	}{
		{
			name: "complete", rows: countRows(2),
			run: func(_ *testing.T, rows *sql.Rows, _ *Stream, _ context.CancelFunc) {
				for rows.Next() {
				}
			},
			outcome: OutcomeComplete, state: Complete,
		},
		{
			// The fake's connections cannot be cut, so Close drains.
			name: "drained", rows: countRows(5),
			run: func(t *testing.T, rows *sql.Rows, _ *Stream, _ context.CancelFunc) {
				require.True(t, rows.Next())
			},
			outcome: OutcomeDrained, state: Closed,
		},
		{
			name: "drained while paused", rows: countRows(5),
			run: func(t *testing.T, rows *sql.Rows, s *Stream, _ context.CancelFunc) {
				require.True(t, rows.Next())
				require.NoError(t, s.Pause())
				time.Sleep(10 * time.Millisecond)
			},
			outcome: OutcomeDrained, state: Closed, endedPaused: true,
		},
		{
			name: "canceled", rows: countRows(5),
			run: func(t *testing.T, rows *sql.Rows, s *Stream, _ context.CancelFunc) {
				require.True(t, rows.Next())
				require.NoError(t, s.Cancel())
				require.False(t, rows.Next())
			},
			outcome: OutcomeCanceled, state: Failed, err: ErrCanceled,
		},
		{
			// database/sql closes the rows from its own goroutine.
			name: "context", rows: countRows(5),
			run: func(t *testing.T, rows *sql.Rows, s *Stream, cancel context.CancelFunc) {
				require.True(t, rows.Next())
				cancel()
				require.Eventually(t, func() bool { return s.State() == Closed }, time.Second, time.Millisecond)
			},
			outcome: OutcomeContext, state: Closed, err: context.Canceled,
		},
		{
			// The paused Next sees the context end, or database/sql closes
			// the rows first: the outcome is the same.
			name: "context while paused", rows: countRows(5),
			run: func(t *testing.T, rows *sql.Rows, s *Stream, cancel context.CancelFunc) {
				require.True(t, rows.Next())
				require.NoError(t, s.Pause())
				cancel()
				require.False(t, rows.Next())
			},
			outcome: OutcomeContext, err: context.Canceled, endedPaused: true,
		},
		{
			name: "pause timeout", rows: countRows(5), opts: []Option{WithPauseTimeout(10 * time.Millisecond)},
			run: func(t *testing.T, rows *sql.Rows, s *Stream, _ context.CancelFunc) {
				require.True(t, rows.Next())
				require.NoError(t, s.Pause())
				require.False(t, rows.Next())
			},
			outcome: OutcomePauseTimeout, state: Failed, err: ErrPauseTimeout, endedPaused: true,
		},
		{
			name: "failed", rows: func(string) *fakeRows { return &fakeRows{n: 1, err: errServer} },
			run: func(_ *testing.T, rows *sql.Rows, _ *Stream, _ context.CancelFunc) {
				for rows.Next() {
				}
			},
			outcome: OutcomeFailed, state: Failed, err: errServer,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			db, _ := openFake(t, tc.rows)
			s := mustStream(t, append([]Option{WithObserver(rec)}, tc.opts...)...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rows, err := db.QueryContext(ctx, "q", s)
			require.NoError(t, err)
			tc.run(t, rows, s, cancel)
			_ = rows.Close()

			end := rec.ended(t)
			assert.Equal(t, tc.outcome, end.Outcome)
			if tc.state != Running { // the context case ends Closed or Failed, as the race goes
				assert.Equal(t, tc.state, end.Stats.State)
			}
			assert.Equal(t, s.Stats().State, end.Stats.State)
			if tc.err != nil {
				assert.ErrorIs(t, end.Err, tc.err)
			} else {
				assert.NoError(t, end.Err)
			}
			assert.Equal(t, tc.endedPaused, end.EndedPaused)
			if tc.endedPaused {
				assert.Positive(t, end.Paused)
				assert.Equal(t, end.Stats.PausedTotal, end.Paused)
			} else {
				assert.Zero(t, end.Paused)
			}
			assert.False(t, end.ConnCut, "the fake's connections cannot be cut")
			n := 0
			for _, e := range rec.all() {
				if e.Kind == EventEnded {
					n++
				}
			}
			assert.Equal(t, 1, n, "EventEnded fires once: %v", rec.kinds())
		})
	}
}

func TestObserverPauseTimeoutEvents(t *testing.T) {
	t.Run("fail", func(t *testing.T) {
		rec := &recorder{}
		db, _ := openFake(t, countRows(5), WithObserver(rec), WithPauseTimeout(20*time.Millisecond))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		defer rows.Close()
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		require.Eventually(t, func() bool { return s.State() == Failed }, time.Second, time.Millisecond)
		timeout := rec.last(t, EventPauseTimeout)
		assert.Equal(t, Paused, timeout.Stats.State, "fired before the stream failed")
		assert.Equal(t, int64(1), timeout.Stats.PauseTimeouts)
		assert.GreaterOrEqual(t, timeout.Paused, 20*time.Millisecond)
		assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout}, rec.kinds(),
			"no EventResumed for a pause that failed the stream")
	})
	t.Run("resume", func(t *testing.T) {
		rec := &recorder{}
		db, _ := openFake(t, countRows(5), WithObserver(rec),
			WithPauseTimeout(20*time.Millisecond), WithPauseTimeoutAction(ResumeOnPauseTimeout))
		s := mustStream(t)
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		require.True(t, rows.Next(), "resumed by the timeout")
		require.NoError(t, rows.Close())
		assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout, EventResumed, EventEnded}, rec.kinds())
		timeout, resumed := rec.last(t, EventPauseTimeout), rec.last(t, EventResumed)
		assert.Equal(t, Paused, timeout.Stats.State, "fired before the stream resumed")
		assert.GreaterOrEqual(t, resumed.Paused, 20*time.Millisecond)
		assert.LessOrEqual(t, timeout.Paused, resumed.Paused, "the same pause, a moment later")
		end := rec.last(t, EventEnded)
		assert.False(t, end.EndedPaused, "the pause ended with EventResumed")
		assert.Equal(t, int64(1), end.Stats.PauseTimeouts)
	})
}

// TestObserverEndedOnce closes the driver rows twice, as code holding a
// driver.Rows may: EventEnded still fires once.
func TestObserverEndedOnce(t *testing.T) {
	rec := &recorder{}
	c, err := NewConnector(fakeConnector{&fakeDriver{newRows: countRows(3)}}, WithObserver(rec))
	require.NoError(t, err)
	dc, err := c.Connect(context.Background())
	require.NoError(t, err)
	defer func() { _ = dc.Close() }()
	r, err := dc.(driver.QueryerContext).QueryContext(context.Background(), "q", nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	assert.Equal(t, []EventKind{EventStarted, EventEnded}, rec.kinds())
	assert.Equal(t, OutcomeDrained, rec.last(t, EventEnded).Outcome)
}

func TestObserverQueryTextOnlyOnRequest(t *testing.T) {
	const secret = "argument-value-42"
	for _, include := range []bool{false, true} {
		t.Run(fmt.Sprint(include), func(t *testing.T) {
			rec := &recorder{}
			db, _ := openFake(t, countRows(1), WithObserver(rec), WithObserverQueryText(include))
			rows, err := db.Query("SELECT ?", secret)
			require.NoError(t, err)
			readAll(t, rows)
			stmt, err := db.Prepare("SELECT prepared ?")
			require.NoError(t, err)
			defer func() { _ = stmt.Close() }()
			rows, err = stmt.Query(secret)
			require.NoError(t, err)
			readAll(t, rows)

			var started []string
			for _, e := range rec.all() {
				assert.NotContains(t, fmt.Sprintf("%+v", e), secret, "an argument reached an event")
				if e.Kind == EventStarted {
					started = append(started, e.Query)
				}
			}
			if include {
				assert.Equal(t, []string{"SELECT ?", "SELECT prepared ?"}, started)
			} else {
				assert.Equal(t, []string{"", ""}, started)
			}
		})
	}
}

func TestStreamObserverReplacesConnectors(t *testing.T) {
	conn, own := &recorder{}, &recorder{}
	db, _ := openFake(t, countRows(2), WithObserver(conn))
	rows, err := db.Query("q", mustStream(t, WithObserver(own)))
	require.NoError(t, err)
	readAll(t, rows)
	assert.Empty(t, conn.all())
	assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventEnded}, own.kinds())

	// A Stream without an observer of its own keeps the connector's.
	rows, err = db.Query("q", mustStream(t))
	require.NoError(t, err)
	readAll(t, rows)
	assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventEnded}, conn.kinds())
}

func TestNilObserverIsAnError(t *testing.T) {
	for name, o := range map[string]Observer{
		"nil":              nil,
		"nil ObserverFunc": ObserverFunc(nil),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewStream(WithObserver(o))
			require.ErrorIs(t, err, ErrInvalidOption)
			assert.Contains(t, err.Error(), "WithObserver")
			_, err = NewConnector(fakeConnector{&fakeDriver{}}, WithObserver(o))
			require.ErrorIs(t, err, ErrInvalidOption)
		})
	}
}

// TestSlowObserverSlowsOnlyItsCaller holds the observer inside the
// EventPaused of one goroutine's Pause: the stream's other callers must
// not wait for it, and the observer may itself use the stream.
func TestSlowObserverSlowsOnlyItsCaller(t *testing.T) {
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	inside := make(chan error, 1)
	var s *Stream
	slow := ObserverFunc(func(e Event) {
		if e.Kind != EventPaused {
			return
		}
		// Calling back into the stream must not deadlock.
		stats := make(chan Stats, 1)
		go func() { stats <- s.Stats() }()
		select {
		case st := <-stats:
			if st.State != Paused {
				inside <- fmt.Errorf("Stats in the observer: state %v", st.State)
			}
			inside <- nil
		case <-time.After(time.Second):
			inside <- errors.New("Stats called by the observer blocked")
		}
		<-release
	})
	db, _ := openFake(t, countRows(3), WithObserver(slow))
	s = mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	// Deferred after rows.Close, so it runs first: a failing test must not
	// leave the observer, and whatever it holds, blocking the Close.
	defer releaseOnce()
	require.True(t, rows.Next())

	paused := make(chan error, 1)
	go func() { paused <- s.Pause() }()
	select {
	case err := <-inside:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("the observer did not get EventPaused")
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Stats()
		_ = s.Resume()
		_ = rows.Next()
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the stream's other callers waited for a slow observer")
	}
	select {
	case err := <-paused:
		t.Fatalf("Pause returned (%v) before its observer did", err)
	default:
	}
	releaseOnce()
	require.NoError(t, <-paused)
}

func TestObserverStrings(t *testing.T) {
	var kinds, outcomes, modes []string
	for k := EventStarted; k <= EventEnded+1; k++ {
		kinds = append(kinds, k.String())
	}
	for o := OutcomeNone; o <= OutcomeFailed+1; o++ {
		outcomes = append(outcomes, o.String())
	}
	for m := ModeSingle; m <= ModeCursor+1; m++ {
		modes = append(modes, m.String())
	}
	assert.Equal(t, "started first_row paused resumed pause_timeout ended EventKind(6)", strings.Join(kinds, " "))
	assert.Equal(t, "none complete drained cut cursor_closed canceled context pause_timeout failed Outcome(9)", strings.Join(outcomes, " "))
	assert.Equal(t, "single cursor StreamMode(2)", strings.Join(modes, " "))
}

// TestObserverQueryAllocs holds the price of an observer: with one that
// keeps nothing, a never-paused query allocates no more than without.
func TestObserverQueryAllocs(t *testing.T) {
	rowsOf := countRows(100)
	plain, _ := openFake(t, rowsOf)
	observed, _ := openFake(t, rowsOf, WithObserver(ObserverFunc(func(Event) {})))
	queryAll(t, plain)
	queryAll(t, observed)
	base := testing.AllocsPerRun(200, func() { queryAll(t, plain) })
	got := testing.AllocsPerRun(200, func() { queryAll(t, observed) })
	t.Logf("without an observer %.0f allocs/query, with one %.0f", base, got)
	assert.Equal(t, base, got)
}

// TestOutcomeOfOtherEventsIsNone: only EventEnded carries an Outcome;
// every other event's is OutcomeNone, which prints "none", never
// "complete".
func TestOutcomeOfOtherEventsIsNone(t *testing.T) {
	db, _ := openFake(t, countRows(3))
	rec := &recorder{}
	s := mustStream(t, WithObserver(rec))
	rows, err := db.Query("SELECT q", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	require.NoError(t, s.Resume())
	for rows.Next() {
	}
	require.NoError(t, rows.Close())
	events := rec.all()
	require.Len(t, events, 5, "%v", rec.kinds())
	for _, e := range events {
		if e.Kind == EventEnded {
			assert.Equal(t, OutcomeComplete, e.Outcome)
			continue
		}
		assert.Equal(t, OutcomeNone, e.Outcome, "%s", e.Kind)
		assert.Equal(t, "none", e.Outcome.String())
	}
}
