package jsonstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
