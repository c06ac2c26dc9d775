package jsonstream

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStatsIsOneSnapshot: while one goroutine pauses and resumes as fast
// as it can, Stats never pairs a state with the pause figures of another
// moment (Running with PausedNow > 0, Paused with PausedNow = 0).
func TestStatsIsOneSnapshot(t *testing.T) {
	db, _ := openFake(t, countRows(1))
	s := mustStream(t)
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the controller; stopped by stop
		defer wg.Done()
		for !stop.Load() {
			_ = s.Pause()
			_ = s.Resume()
		}
	}()
	var bad, paused, samples int
	var lastTotal time.Duration
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) || paused == 0 {
		st := s.Stats()
		samples++
		if st.State == Paused {
			paused++
		}
		if (st.State == Paused) != (st.PausedNow > 0) {
			bad++
			if bad <= 3 {
				t.Logf("inconsistent snapshot: %+v", st)
			}
		}
		assert.GreaterOrEqual(t, st.PausedTotal, lastTotal, "PausedTotal went back")
		lastTotal = st.PausedTotal
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d snapshots, %d paused, %d inconsistent", samples, paused, bad)
	assert.Zero(t, bad, "snapshots mixing two moments")
}
