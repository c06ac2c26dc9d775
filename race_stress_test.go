package jsonstream

import (
	"context"
	"database/sql/driver"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRaceStress drives, thousands of times on the fake driver, the
// interleavings that the stream's locks put in order:
//
//   - a failure (Cancel, the pause timeout, the end of the context) racing
//     Close: the ending lock makes a failure's cut finish before Close
//     hands the connection back, and keeps a failure from cutting once
//     Close has ended the stream;
//   - the pause timer racing Resume and a new Pause: the pauser's lock and
//     the pause generation keep a timer that lost the race from failing
//     the stream.
//
// Run it under -race: most of those locks also order memory.
func TestRaceStress(t *testing.T) {
	rounds := 6000
	if testing.Short() {
		rounds = 1500
	}
	t.Run("failure racing Close", func(t *testing.T) {
		for _, racer := range []failureRacer{racerCancel, racerPauseTimeout, racerContext} {
			t.Run(racer.String(), func(t *testing.T) { raceFailureWithClose(t, racer, rounds) })
		}
	})
	t.Run("pause timer racing Resume and Pause", func(t *testing.T) {
		racePauseTimer(t, 2*rounds)
	})
}

type failureRacer int

const (
	racerCancel failureRacer = iota
	racerPauseTimeout
	racerContext
)

func (f failureRacer) String() string {
	return [...]string{"Cancel", "pause timeout", "context"}[f]
}

// stressRows starts a query at the driver level on a conn whose socket
// is sock, and reads its first row.
func stressRows(t *testing.T, ctx context.Context, sock *fakeSock, opts ...Option) *rows {
	t.Helper()
	c := driverConn(t, &fakeDriver{newRows: countRows(100)}, sock, opts...)
	dr, err := c.QueryContext(ctx, "SELECT q", nil) // a read: jsonstream watches its context
	require.NoError(t, err)
	require.NoError(t, dr.Next(make([]driver.Value, 1)))
	return dr.(*rows)
}

// spin lets the scheduler interleave goroutines a few times: a cheaper,
// finer-grained wait than time.Sleep.
func spin(n int) {
	for range n {
		runtime.Gosched()
	}
}

// stateTrail records every state a poller saw, in order.
type stateTrail []State

// forward reports whether the trail only moves the way the state machine
// allows: between Running and Paused, from those to a final state, and
// never out of a final state.
func (tr stateTrail) forward() bool {
	for i := 1; i < len(tr); i++ {
		if tr[i-1].final() && tr[i] != tr[i-1] {
			return false
		}
	}
	return true
}

// failureRound is what one round of a failure racing Close left behind.
type failureRound struct {
	r          *rows
	sock       *fakeSock
	mode       CloseMode
	racerErr   error // what Cancel returned; nil for the other racers
	afterClose State // the state right after Close returned
	trail      stateTrail
	lateCut    *atomic.Bool // the socket was closed after Close returned
}

func raceFailureWithClose(t *testing.T, racer failureRacer, rounds int) {
	rng := rand.New(rand.NewPCG(uint64(racer), 14))
	results := make([]failureRound, rounds)
	for i := range results {
		mode := []CloseMode{CloseAuto, CloseCut, CloseDrain}[rng.IntN(3)]
		opts := []Option{WithCloseMode(mode)}
		if racer == racerPauseTimeout {
			opts = append(opts, WithPauseTimeout(time.Duration(1+rng.IntN(40))*time.Microsecond))
		}
		ctx, cancel := context.WithCancel(context.Background())
		sock := newFakeSock()
		var handedBack atomic.Bool
		lateCut := new(atomic.Bool)
		slowClose := rng.IntN(4)
		sock.onClose = func() {
			spin(slowClose) // a socket may take a while to close (a TLS close_notify)
			if handedBack.Load() {
				lateCut.Store(true)
			}
		}
		r := stressRows(t, ctx, sock, opts...)
		round := &results[i]
		round.r, round.sock, round.mode, round.lateCut = r, sock, mode, lateCut
		if racer == racerPauseTimeout {
			require.NoError(t, r.Pause()) // the timer is the racer
		}

		racerWait, closeWait := rng.IntN(6), rng.IntN(6)
		if racer == racerPauseTimeout {
			closeWait = rng.IntN(100) // the timer takes longer to start than a goroutine
		}
		start, polled := make(chan struct{}), make(chan stateTrail, 1)
		var done atomic.Bool
		go func() { // the poller; stopped by done
			trail := stateTrail{r.State()}
			for !done.Load() {
				if s := r.State(); s != trail[len(trail)-1] {
					trail = append(trail, s)
				}
				runtime.Gosched()
			}
			polled <- append(trail, r.State())
		}()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the failure
			defer wg.Done()
			<-start
			spin(racerWait)
			switch racer {
			case racerCancel:
				round.racerErr = r.Cancel()
			case racerContext:
				cancel()
			}
		}()
		go func() { // the consumer's Close; database/sql then reuses the conn
			defer wg.Done()
			<-start
			spin(closeWait)
			_ = r.Close()
			handedBack.Store(true)
			round.afterClose = r.State()
		}()
		close(start)
		wg.Wait()
		done.Store(true)
		round.trail = <-polled
		cancel()
	}

	// A timer or a context's watch that lost the race may still be on its
	// way: it must find the stream ended and do nothing.
	time.Sleep(50 * time.Millisecond)
	wins := map[State]int{}
	for i, round := range results {
		final := round.r.State()
		wins[final]++
		where := fmt.Sprintf("round %d (%s, %s)", i, racer, round.mode)
		require.False(t, round.lateCut.Load(), "%s: the connection was cut after Close handed it back", where)
		require.True(t, round.trail.forward(), "%s: the state went back: %v", where, round.trail)
		require.True(t, round.afterClose.final(), "%s: Close left the stream %v", where, round.afterClose)
		require.Equal(t, round.afterClose, final, "%s: the state changed after Close", where)
		switch final {
		case Failed:
			require.True(t, round.sock.isClosed(), "%s: failed without a cut", where)
			want := map[failureRacer]error{racerCancel: ErrCanceled, racerPauseTimeout: ErrPauseTimeout, racerContext: context.Canceled}[racer]
			require.ErrorIs(t, round.r.err(), want, where)
		case Closed:
			if round.mode != CloseCut {
				require.False(t, round.sock.isClosed(), "%s: cut after Close won", where)
			}
		default:
			t.Fatalf("%s: the stream ended %v", where, final)
		}
		if racer == racerCancel {
			require.Equal(t, final == Failed, round.racerErr == nil,
				"%s: Cancel returned %v and the stream ended %v", where, round.racerErr, final)
		}
	}
	t.Logf("%s racing Close: %d failed first, %d closed first", racer, wins[Failed], wins[Closed])
	// Both orders must occur often, or the test proves nothing.
	require.Greater(t, wins[Failed], len(results)/50, "the failure hardly ever won")
	require.Greater(t, wins[Closed], len(results)/50, "Close hardly ever won")
}

// timerRound is what one round of the pause timer racing Resume left.
type timerRound struct {
	r         *rows
	sock      *fakeSock
	resumeErr error
	repaused  bool // a new pause, without a timeout, followed the Resume
}

func racePauseTimer(t *testing.T, rounds int) {
	rng := rand.New(rand.NewPCG(7, 14))
	results := make([]timerRound, rounds)
	for i := range results {
		sock := newFakeSock()
		r := stressRows(t, context.Background(), sock,
			WithPauseTimeout(time.Duration(1+rng.IntN(40))*time.Microsecond))
		round := &results[i]
		round.r, round.sock = r, sock
		require.NoError(t, r.Pause())
		// Mostly close to the timer's start, where Resume meets its
		// callback; sometimes later, so that the timer wins as well.
		wait := rng.IntN(8)
		if rng.IntN(4) == 0 {
			wait = rng.IntN(200)
		}
		spin(wait)
		if rng.IntN(4) == 0 {
			// The timer expires while its lock is held, as when it fires
			// during a Resume, a Close or a Stats: its callback waits for
			// the lock. Held for less than the millisecond after which
			// sync.Mutex hands the lock to a waiter, so the Resume and
			// the new Pause below usually get it before the callback.
			p := r.pause.Load()
			p.mu.Lock()
			for deadline := time.Now().Add(100 * time.Microsecond); time.Now().Before(deadline); {
				runtime.Gosched()
			}
			p.mu.Unlock()
		}
		round.resumeErr = r.Resume()
		if round.resumeErr == nil && rng.IntN(2) == 0 {
			// The old pause's timer may fire now, during this pause.
			require.NoError(t, r.SetPauseTimeout(0))
			require.NoError(t, r.Pause())
			round.repaused = true
		}
	}

	time.Sleep(50 * time.Millisecond) // every timer that lost has fired by now
	var resumed, timedOut int
	for i, round := range results {
		st := round.r.Stats()
		where := fmt.Sprintf("round %d", i)
		if round.resumeErr == nil {
			resumed++
			require.NotEqual(t, Failed, st.State, "%s: failed with %v after Resume returned nil", where, round.r.err())
			require.Zero(t, st.PauseTimeouts, "%s: a pause timeout after Resume returned nil", where)
			require.False(t, round.sock.isClosed(), "%s: cut after Resume returned nil", where)
			want := Running
			if round.repaused {
				want = Paused
			}
			require.Equal(t, want, st.State, where)
		} else {
			timedOut++
			require.ErrorIs(t, round.resumeErr, ErrStreamEnded, where)
			require.Equal(t, Failed, st.State, where)
			require.ErrorIs(t, round.r.err(), ErrPauseTimeout, where)
			require.Equal(t, int64(1), st.PauseTimeouts, where)
			require.True(t, round.sock.isClosed(), "%s: timed out without a cut", where)
		}
		require.NoError(t, round.r.Close())
	}
	t.Logf("pause timer racing Resume: %d resumed first, %d timed out first", resumed, timedOut)
	require.Greater(t, resumed, len(results)/50, "Resume hardly ever won")
	require.Greater(t, timedOut, len(results)/50, "the timer hardly ever won")
}
