package jsonstream

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
		d := &scriptDB{rows: 300, fail: map[string]error{"ROLLBACK": sqlStateErr("08006")}}
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
