package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
	c, err := NewConnector(&fakeDriver{newRows: countRows(3)}, WithObserver(rec))
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
			_, err = NewConnector(&fakeDriver{}, WithObserver(o))
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
	for k := EventStarted; k <= EventContinued+1; k++ {
		kinds = append(kinds, k.String())
	}
	for o := OutcomeNone; o <= OutcomeFailed+1; o++ {
		outcomes = append(outcomes, o.String())
	}
	for m := ModeSingle; m <= ModePortal+1; m++ {
		modes = append(modes, m.String())
	}
	assert.Equal(t, "started first_row paused resumed pause_timeout ended continued EventKind(7)", strings.Join(kinds, " "))
	assert.Equal(t, "none complete drained cut cursor_closed portal_closed canceled context pause_timeout failed Outcome(10)", strings.Join(outcomes, " "))
	assert.Equal(t, "single cursor portal StreamMode(3)", strings.Join(modes, " "))
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

// TestObservationOnlyWithObserver: what a stream keeps for an observer
// (its event queue) is allocated only for a stream that has one; a query
// without an observer allocates that much less.
func TestObservationOnlyWithObserver(t *testing.T) {
	rowsOf := countRows(1)
	plain, _ := openFake(t, rowsOf)
	observed, _ := openFake(t, rowsOf, WithObserver(ObserverFunc(func(Event) {})))
	bytesPerQuery := func(db *sql.DB) float64 {
		queryAll(t, db)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const n = 200
		for i := 0; i < n; i++ {
			queryAll(t, db)
		}
		runtime.ReadMemStats(&after)
		return float64(after.TotalAlloc-before.TotalAlloc) / n
	}
	without, with := bytesPerQuery(plain), bytesPerQuery(observed)
	t.Logf("without an observer %.0f B/query, with one %.0f", without, with)
	// The observation's size, less what the size classes of the two
	// layouts may round away.
	assert.GreaterOrEqual(t, with-without, float64(unsafe.Sizeof(observation{}))-64)
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

// TestObserverCloseWaitsForEndedDeliveredElsewhere: when another
// goroutine is delivering the stream's events as Close fires EventEnded,
// that goroutine delivers EventEnded as well, and Close returns only once
// the observer is done with it.
func TestObserverCloseWaitsForEndedDeliveredElsewhere(t *testing.T) {
	inPaused, releasePaused := make(chan struct{}), make(chan struct{})
	inEnded, releaseEnded := make(chan struct{}), make(chan struct{})
	observer := ObserverFunc(func(e Event) {
		switch e.Kind {
		case EventPaused:
			close(inPaused)
			<-releasePaused
		case EventEnded:
			close(inEnded)
			<-releaseEnded
		}
	})
	db, _ := openFake(t, countRows(5))
	s := mustStream(t, WithObserver(observer))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	require.True(t, rows.Next())

	paused := make(chan error, 1)
	go func() { paused <- s.Pause() }()
	select {
	case <-inPaused:
	case <-time.After(5 * time.Second):
		t.Fatal("the observer did not get EventPaused")
	}
	// Whatever fails below, nothing may stay blocked in the observer.
	defer func() {
		select {
		case <-releaseEnded:
		default:
			close(releaseEnded)
		}
	}()
	defer func() {
		select {
		case <-releasePaused:
		default:
			close(releasePaused)
		}
	}()

	closed := make(chan error, 1)
	go func() { closed <- rows.Close() }()
	r := s.bound.Load()
	require.Eventually(t, func() bool {
		r.obs.mu.Lock()
		defer r.obs.mu.Unlock()
		return len(r.obs.queue) == 1
	}, 5*time.Second, time.Millisecond, "Close queues EventEnded behind the pause's delivery")

	close(releasePaused)
	select {
	case <-inEnded:
	case <-time.After(5 * time.Second):
		t.Fatal("EventEnded was not delivered")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the observer still had EventEnded", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(releaseEnded)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return once EventEnded was delivered")
	}
	require.NoError(t, <-paused)
}

// TestPauseTimeoutSparesALaterPause: a pause timeout whose observer
// resumes the pause and begins a new one, without a timeout of its own,
// takes no effect: the new pause holds until Resume, and the stream then
// reads every row.
func TestPauseTimeoutSparesALaterPause(t *testing.T) {
	const n = 5
	var s *Stream
	var once sync.Once
	calls := make(chan error, 3)
	observer := ObserverFunc(func(e Event) {
		if e.Kind != EventPauseTimeout {
			return
		}
		once.Do(func() {
			calls <- s.SetPauseTimeout(0)
			calls <- s.Resume()
			calls <- s.Pause()
		})
	})
	db, _ := openFake(t, countRows(n))
	s = mustStream(t, WithObserver(observer), WithPauseTimeout(20*time.Millisecond))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	for range 3 {
		select {
		case err := <-calls:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("the observer did not get EventPauseTimeout")
		}
	}
	require.Never(t, func() bool { return s.State() != Paused }, 300*time.Millisecond, 5*time.Millisecond,
		"the expired timeout must leave the second pause alone")
	require.NoError(t, s.Resume())
	got := 1
	for rows.Next() {
		got++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, n, got)
}

// The delivery contract (Observer): one event at a time, in the order
// they happened, EventEnded last and delivered before Close returns; a
// panicking observer does not stop the stream or its connection's
// accounting.

// validSequence checks the events of one stream against the order the
// stream's states allow, and that they never overlapped.
func validSequence(kinds []EventKind) error {
	if len(kinds) < 2 || kinds[0] != EventStarted || kinds[len(kinds)-1] != EventEnded {
		return fmt.Errorf("want started … ended, got %v", kinds)
	}
	paused := false
	for i, k := range kinds[1 : len(kinds)-1] {
		switch k {
		case EventPaused:
			if paused {
				return fmt.Errorf("event %d: paused twice: %v", i+1, kinds)
			}
			paused = true
		case EventResumed:
			if !paused {
				return fmt.Errorf("event %d: resumed without a pause: %v", i+1, kinds)
			}
			paused = false
		case EventPauseTimeout:
			if !paused {
				return fmt.Errorf("event %d: a timeout without a pause: %v", i+1, kinds)
			}
		case EventStarted, EventEnded:
			return fmt.Errorf("event %d: %v in the middle: %v", i+1, k, kinds)
		}
	}
	return nil
}

// overlapRecorder records events and notes when two deliveries overlap.
type overlapRecorder struct {
	recorder
	inside  sync.Mutex // held during a delivery; TryLock fails on an overlap
	overlap bool
}

func (o *overlapRecorder) ObserveStream(e Event) {
	if !o.inside.TryLock() {
		o.mu.Lock()
		o.overlap = true
		o.mu.Unlock()
		o.recorder.ObserveStream(e)
		return
	}
	defer o.inside.Unlock()
	if e.Kind == EventPauseTimeout || e.Kind == EventPaused {
		time.Sleep(100 * time.Microsecond) // a slow observer widens the races
	}
	o.recorder.ObserveStream(e)
}

// TestObserverOrderUnderRaces: Pause and Resume from another goroutine,
// a pause timer that resumes, and Close, all racing; at Close's return
// every stream's events are complete, in order, EventEnded last, and no
// two deliveries overlapped.
func TestObserverOrderUnderRaces(t *testing.T) {
	for _, action := range []PauseTimeoutAction{ResumeOnPauseTimeout, FailOnPauseTimeout} {
		t.Run(action.String(), func(t *testing.T) {
			db, _ := openFake(t, countRows(1000))
			for i := 0; i < 300; i++ {
				rec := &overlapRecorder{}
				s := mustStream(t, WithObserver(rec), WithPauseTimeout(time.Duration(i%3)*time.Millisecond+time.Microsecond),
					WithPauseTimeoutAction(action))
				rows, err := db.Query("q", s)
				require.NoError(t, err)
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < 3; j++ {
						_ = s.Pause()
						_ = s.Resume()
					}
				}()
				read := 0
				for read < i%7 && rows.Next() {
					read++
				}
				_ = s.Pause()
				require.NoError(t, rows.Close())
				kinds := rec.kinds() // at Close's return
				wg.Wait()
				require.NoError(t, validSequence(kinds), "round %d", i)
				assert.Equal(t, kinds, rec.kinds(), "round %d: an event after EventEnded", i)
				assert.False(t, rec.overlap, "round %d: two deliveries overlapped", i)
			}
		})
	}
}

// TestObserverPauseTimeoutThenResumeBeforeClose is the reported race:
// under ResumeOnPauseTimeout, EventResumed must have reached the observer
// when Close returns.
func TestObserverPauseTimeoutThenResumeBeforeClose(t *testing.T) {
	db, _ := openFake(t, countRows(5))
	for i := 0; i < 200; i++ {
		rec := &overlapRecorder{}
		s := mustStream(t, WithObserver(rec), WithPauseTimeout(time.Microsecond), WithPauseTimeoutAction(ResumeOnPauseTimeout))
		rows, err := db.Query("q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		require.Eventually(t, func() bool { return s.State() == Running }, time.Second, 10*time.Microsecond)
		require.NoError(t, rows.Close())
		assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout, EventResumed, EventEnded},
			rec.kinds(), "round %d", i)
	}
}

// panicker panics on one kind of event.
type panicker struct {
	on   EventKind
	seen recorder
}

func (p *panicker) ObserveStream(e Event) {
	p.seen.ObserveStream(e)
	if e.Kind == p.on {
		panic("observer bug on " + e.Kind.String())
	}
}

// TestObserverPanicKeepsPool: whichever event the observer panics on,
// the stream goes on, Close returns an ObserverPanicError, every later
// event is delivered, and a pool of one connection serves the next query.
func TestObserverPanicKeepsPool(t *testing.T) {
	for _, kind := range []EventKind{EventStarted, EventFirstRow, EventPaused, EventResumed, EventEnded} {
		t.Run(kind.String(), func(t *testing.T) {
			p := &panicker{on: kind}
			db, _ := openFake(t, countRows(3), WithObserver(p))
			db.SetMaxOpenConns(1)
			s := mustStream(t)
			rows, err := db.Query("q", s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, s.Pause())
			require.NoError(t, s.Resume())
			n := 1
			for rows.Next() {
				n++
			}
			assert.Equal(t, 3, n, "the stream went on")
			// database/sql closed the rows at their end, and reports Close's
			// error from Err.
			err = rows.Err()
			assert.NoError(t, rows.Close())
			var pe *ObserverPanicError
			require.ErrorAs(t, err, &pe)
			assert.ErrorIs(t, err, ErrObserverPanic)
			assert.Equal(t, kind, pe.Kind)
			assert.Equal(t, "observer bug on "+kind.String(), pe.Value)
			assert.Contains(t, err.Error(), "jsonstream: the observer panicked on "+kind.String())
			assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventResumed, EventEnded}, p.seen.kinds())

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var got string
			require.NoError(t, db.QueryRowContext(ctx, "q", mustStream(t, WithObserver(&recorder{}))).Scan(&got),
				"the pool of one serves the next query")
		})
	}
}

// TestObserverPanicLeavesCloseErrorFirst: when Close has an error of its
// own, that error is the one returned.
func TestObserverPanicLeavesCloseErrorFirst(t *testing.T) {
	boom := errors.New("inner close failed")
	db, _ := openFake(t, func(string) *fakeRows { return &fakeRows{n: 3, closeErr: boom} }, WithObserver(&panicker{on: EventEnded}))
	rows, err := db.Query("q")
	require.NoError(t, err)
	require.True(t, rows.Next())
	assert.ErrorIs(t, rows.Close(), boom)
}

// TestObserverResumeDuringPauseTimeoutWins: a Resume that arrives while
// the observer handles EventPauseTimeout comes before the timeout takes
// effect, so it wins: the stream goes on and delivers every row, whatever
// the pause timeout's action, and the observer sees one EventResumed,
// after EventPauseTimeout, and EventEnded last, before the Close that
// ended the stream returns. The Resume comes from the observer itself, or
// from another goroutine while the observer blocks.
func TestObserverResumeDuringPauseTimeoutWins(t *testing.T) {
	const n = 5
	for _, action := range []PauseTimeoutAction{ResumeOnPauseTimeout, FailOnPauseTimeout} {
		for _, from := range []string{"observer", "other goroutine"} {
			t.Run(action.String()+"/"+from, func(t *testing.T) {
				var s *Stream
				rec := &recorder{}
				inTimeout := make(chan struct{})
				release := make(chan struct{})
				resumed := make(chan error, 1)
				observer := ObserverFunc(func(e Event) {
					rec.ObserveStream(e)
					if e.Kind != EventPauseTimeout {
						return
					}
					if from == "observer" {
						resumed <- s.Resume()
						return
					}
					close(inTimeout)
					<-release
				})
				db, _ := openFake(t, countRows(n))
				s = mustStream(t, WithObserver(observer), WithPauseTimeout(20*time.Millisecond), WithPauseTimeoutAction(action))
				rows, err := db.Query("q", s)
				require.NoError(t, err)
				// On a failure below, Cancel wakes the consumer, unless the
				// stream is wedged: never wait for it.
				stuck := func(what string) {
					go func() { _ = s.Cancel() }()
					t.Fatal(what)
				}
				require.True(t, rows.Next())
				require.NoError(t, s.Pause())

				read := make(chan int, 1)
				go func() { // the consumer, held by the pause
					got := 1
					for got < n && rows.Next() {
						got++
					}
					read <- got
				}()
				if from == "other goroutine" {
					select {
					case <-inTimeout:
					case <-time.After(10 * time.Second):
						stuck("no EventPauseTimeout")
					}
					go func() { resumed <- s.Resume() }()
				}
				select {
				case err := <-resumed:
					require.NoError(t, err, "Resume during EventPauseTimeout")
				case <-time.After(10 * time.Second):
					stuck("Resume did not return") // nor may it wait for the observer
				}
				select {
				case got := <-read: // in the second case, while the observer still blocks
					require.Equal(t, n, got, "every row: %v", rows.Err())
				case <-time.After(10 * time.Second):
					stuck("the stream did not go on after Resume")
				}
				// The end of the result: database/sql closes the rows.
				ended := make(chan bool, 1)
				go func() { ended <- rows.Next() }()
				if from == "other goroutine" {
					select {
					case <-ended:
						t.Errorf("the stream was closed while the observer was still on EventPauseTimeout, before EventEnded")
					case <-time.After(50 * time.Millisecond):
					}
					close(release)
				}
				select {
				case more := <-ended:
					require.False(t, more)
				case <-time.After(10 * time.Second):
					t.Fatal("the end of the stream did not return")
				}
				require.NoError(t, rows.Err(), "the stream failed")
				assert.Equal(t, Complete, s.State())
				assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout, EventResumed, EventEnded},
					rec.kinds())
				end := rec.last(t, EventEnded)
				assert.Equal(t, OutcomeComplete, end.Outcome)
				assert.Equal(t, int64(1), end.Stats.PauseTimeouts)
				assert.False(t, end.EndedPaused)
			})
		}
	}
}

// TestObserverPanicIsRecovered: an observer that panics on EventStarted
// and on EventEnded neither reaches the caller nor wedges a pool of one;
// Close reports the first panic as an *ObserverPanicError wrapping
// ErrObserverPanic, unless Close has an error of its own.
func TestObserverPanicIsRecovered(t *testing.T) {
	panicky := ObserverFunc(func(e Event) {
		switch e.Kind {
		case EventStarted, EventEnded:
			panic("observer: " + e.Kind.String())
		}
	})
	t.Run("Close reports the first panic", func(t *testing.T) {
		db, _ := openFake(t, countRows(3), WithObserver(panicky))
		db.SetMaxOpenConns(1)
		for i := 0; i < 2; i++ { // the second query needs the first one's connection back
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			rows, err := db.QueryContext(ctx, "q")
			require.NoError(t, err, "query %d", i)
			require.True(t, rows.Next())
			err = rows.Close()
			cancel()
			require.ErrorIs(t, err, ErrObserverPanic)
			var pe *ObserverPanicError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, EventStarted, pe.Kind, "the first panic")
			assert.Equal(t, "observer: started", pe.Value)
		}
	})
	t.Run("Close's own error comes first", func(t *testing.T) {
		d := &fakeDriver{cursorRows: 300, fail: map[string]error{"ROLLBACK": sqlStateErr("08006")}}
		db := openScript(t, d, WithFetchSize(100), WithObserver(panicky))
		rows, err := db.Query("SELECT data FROM docs")
		require.NoError(t, err)
		require.True(t, rows.Next())
		err = rows.Close()
		assert.ErrorIs(t, err, sqlStateErr("08006"))
		assert.NotErrorIs(t, err, ErrObserverPanic)
	})
}

// TestObserverPauseTimeoutWaitsForItsEvent: the pause timeout takes
// effect only once its EventPauseTimeout was delivered: while another
// goroutine's observer still holds EventPaused, the stream stays Paused
// past its timeout, and the observer finds it Paused on EventPauseTimeout.
func TestObserverPauseTimeoutWaitsForItsEvent(t *testing.T) {
	var s *Stream
	inPaused, release := make(chan struct{}), make(chan struct{})
	onTimeout := make(chan State, 2)
	observer := ObserverFunc(func(e Event) {
		switch e.Kind {
		case EventPaused:
			close(inPaused)
			<-release
		case EventPauseTimeout:
			onTimeout <- s.State()
			time.Sleep(50 * time.Millisecond) // a slow observer delays the effect
			onTimeout <- s.State()
		}
	})
	rec := &recorder{}
	db, _ := openFake(t, countRows(5))
	s = mustStream(t, WithObserver(ObserverFunc(func(e Event) { rec.ObserveStream(e); observer(e) })),
		WithPauseTimeout(20*time.Millisecond))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	paused := make(chan error, 1)
	go func() { paused <- s.Pause() }()
	<-inPaused
	time.Sleep(100 * time.Millisecond) // the timeout expired meanwhile
	assert.Equal(t, Paused, s.State(), "the timeout took effect before its event was delivered")
	close(release)
	require.NoError(t, <-paused)
	assert.Equal(t, Paused, <-onTimeout, "EventPauseTimeout: the stream is still Paused")
	assert.Equal(t, Paused, <-onTimeout, "the timeout took effect while the observer had its event")
	assert.False(t, rows.Next())
	assert.ErrorIs(t, rows.Err(), ErrPauseTimeout)
	_ = rows.Close()
	assert.Equal(t, []EventKind{EventStarted, EventFirstRow, EventPaused, EventPauseTimeout, EventEnded}, rec.kinds())
}

// TestObserverEndOutcomes: what EventEnded says of endings that
// TestObserverOutcomes does not reach: a stream whose transaction's
// context ended (database/sql closes its rows), a paused stream whose
// query deadline passed, and the stream's first-row time on an event of
// the pause machinery.
func TestObserverEndOutcomes(t *testing.T) {
	t.Run("transaction context", func(t *testing.T) {
		rec := &recorder{}
		db, _ := openFake(t, countRows(5), WithObserver(rec))
		txCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tx, err := db.BeginTx(txCtx, nil)
		require.NoError(t, err)
		rows, err := tx.QueryContext(context.Background(), "q")
		require.NoError(t, err)
		require.True(t, rows.Next())
		cancel()
		end := rec.ended(t)
		assert.Equal(t, OutcomeContext, end.Outcome)
		assert.ErrorIs(t, end.Err, context.Canceled)
		_ = rows.Close()
	})
	t.Run("deadline while paused", func(t *testing.T) {
		rec := &recorder{}
		db, _ := openFake(t, countRows(5), WithObserver(rec))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		s := mustStream(t)
		rows, err := db.QueryContext(ctx, "q", s)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, s.Pause())
		assert.False(t, rows.Next())
		assert.ErrorIs(t, rows.Err(), context.DeadlineExceeded)
		_ = rows.Close()
		end := rec.ended(t)
		assert.Equal(t, Failed, end.Stats.State)
		assert.Equal(t, OutcomeContext, end.Outcome)
		assert.ErrorIs(t, end.Err, context.DeadlineExceeded)
		assert.Positive(t, rec.last(t, EventPaused).Stats.FirstRow, "Stats.FirstRow on EventPaused")
		assert.Equal(t, rec.last(t, EventFirstRow).Stats.FirstRow, end.Stats.FirstRow, "Stats.FirstRow on EventEnded")
	})
}
