package jsonstream

import (
	"context"
	"database/sql"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// docsQuery yields $1 JSON documents of about 280 bytes.
const docsQuery = `SELECT jsonb_build_object(
	'id', g, 'name', 'entity-' || g, 'email', 'user' || g || '@example.com',
	'tags', jsonb_build_array('alpha', 'beta', 'gamma'), 'active', g % 2 = 0,
	'score', g * 1.5, 'created_at', '2024-01-01T00:00:00Z',
	'address', jsonb_build_object('street', g || ' Main Street', 'city', 'Springfield', 'country', 'US'),
	'note', 'n') FROM generate_series(1, $1::int) g`

// heapPeak samples the heap in use every few milliseconds until stop is
// called, and returns the peak.
func heapPeak() (stop func() uint64) {
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the sampler; ends when stop closes done
		defer wg.Done()
		var ms runtime.MemStats
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// TestStreamMemoryIsFlat streams 1,000,000 JSON documents of about 280
// bytes (about 280 MB) through jsonstream and requires the peak heap in
// use, sampled every 5 ms with runtime.ReadMemStats, to stay under 32 MB.
func TestStreamMemoryIsFlat(t *testing.T) {
	const n = 1_000_000
	db := openPG(t, DriverName, "")
	runtime.GC()
	stop := heapPeak()
	s := mustStream(t)
	rows, err := db.QueryContext(context.Background(), docsQuery, n, s)
	require.NoError(t, err)
	count := 0
	var doc sql.RawBytes
	for rows.Next() {
		require.NoError(t, rows.Scan(&doc))
		count++
		if count == n/2 { // a pause in the middle changes nothing either
			require.NoError(t, s.Pause())
			time.AfterFunc(50*time.Millisecond, func() { _ = s.Resume() })
		}
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	peak := stop()
	st := s.Stats()
	t.Logf("%d rows, %.0f MB of documents, peak heap in use %.1f MB", st.Rows, float64(st.Bytes)/1e6, float64(peak)/(1<<20))
	assert.Equal(t, n, count)
	assert.Greater(t, st.Bytes, int64(250e6), "the documents should be about 280 bytes")
	assert.Less(t, peak, uint64(32<<20))
}
