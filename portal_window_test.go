package jsonstream

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// windowPortal is a long portal stream over TCP that has read bytes of
// rows of 290 bytes in elapsed after a first reply of rtt, whose last
// batch came at lastRate bytes per nanosecond, and whose next batch is
// batch rows.
func windowPortal(rtt, elapsed time.Duration, bytes int64, lastRate float64, batch int32) *portal {
	return &portal{
		conn:    &conn{sock: &sock{}},
		rtt:     rtt,
		sent:    time.Now().Add(-rtt - elapsed),
		bytesIn: bytes, rowsIn: bytes / 290,
		lastRate: lastRate,
		batch:    batch,
	}
}

// TestPortalBatchOutgrowsItsWindow: a batch holds twice the bytes a
// round trip carries at the measured rate. Measured through a window of
// two batches of the least size that is too small for the link, the rate
// is about one such batch per round trip; a batch of the bytes of one
// round trip would stay at the least size for ever (the server waited
// for the next Execute 15% of a drain through a 2 ms round trip), while
// this one doubles.
func TestPortalBatchOutgrowsItsWindow(t *testing.T) {
	const rtt = 4 * time.Millisecond
	least := int64(autoBatchBytes) / 290
	perRTT := float64(autoBatchBytes) / float64(rtt) // bytes/ns
	elapsed := 100 * time.Millisecond
	p := windowPortal(rtt, elapsed, int64(perRTT*float64(elapsed)), perRTT, int32(least))
	p.grow()
	assert.InDelta(t, 2*least, int64(p.batch), 2, "batch after a window-limited rate")
}

// TestPortalBatchFollowsTheLastBatch: the rate of the last batch counts
// when it is above the whole stream's, which the slow first batches hold
// down; below it, it does not.
func TestPortalBatchFollowsTheLastBatch(t *testing.T) {
	const rtt = 2 * time.Millisecond
	elapsed := time.Second
	avg := 100e6 / float64(time.Second) // 100 MB/s
	for _, tc := range []struct {
		name     string
		lastRate float64
		want     float64 // bytes/ns the batch is sized for
	}{
		{"faster", 3 * avg, 3 * avg},
		{"slower", avg / 3, avg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := windowPortal(rtt, elapsed, int64(avg*float64(elapsed)), tc.lastRate, portalMaxRows)
			p.grow()
			want := int64(portalHeadroom*tc.want*float64(rtt)) / 290
			// The whole stream's rate falls as the test's clock runs on.
			assert.InEpsilon(t, want, int64(p.batch), 0.02)
		})
	}
}

// TestPortalBatchBounds: however fast the link, a batch holds at most
// portalMaxBytes and portalMaxRows; however slow, at least
// autoBatchBytes; and it grows at most fourfold at a time.
func TestPortalBatchBounds(t *testing.T) {
	const rtt = 2 * time.Millisecond
	elapsed := time.Second
	fast := 10e9 / float64(time.Second) // 10 GB/s
	p := windowPortal(rtt, elapsed, int64(fast*float64(elapsed)), fast, portalMaxRows)
	p.grow()
	assert.Equal(t, int32(portalMaxBytes/290), p.batch, "bytes bound")

	p = windowPortal(rtt, elapsed, int64(fast*float64(elapsed)), fast, 100)
	p.grow()
	assert.Equal(t, int32(400), p.batch, "fourfold")

	p = windowPortal(rtt, elapsed, int64(fast*float64(elapsed)), fast, portalMaxRows)
	p.rowsIn = p.bytesIn / 10 // rows of 10 bytes
	p.grow()
	assert.Equal(t, int32(portalMaxRows), p.batch, "row bound")

	slow := 1e3 / float64(time.Second) // 1 kB/s
	p = windowPortal(rtt, elapsed, int64(slow*float64(elapsed))+290*2000, slow, portalMaxRows)
	p.sent = time.Now().Add(-rtt - elapsed)
	p.grow()
	assert.Equal(t, int32(autoBatchBytes/290), p.batch, "least size")
}

// TestPortalBatchEnded: the rate of a batch is its bytes over the time
// since the end of the one before; the first end only starts the clock.
func TestPortalBatchEnded(t *testing.T) {
	p := &portal{}
	p.bytesIn = 1000
	p.batchEnded()
	assert.Zero(t, p.lastRate, "rate after the first batch")
	assert.Equal(t, int64(1000), p.lastBytes)
	p.lastEnd = time.Now().Add(-time.Millisecond)
	p.bytesIn = 1000 + 1_000_000
	p.batchEnded()
	// 1 MB in a little over 1 ms: just under 1 byte per nanosecond.
	assert.InDelta(t, 1.0, p.lastRate, 0.2)
	assert.Equal(t, int64(1_001_000), p.lastBytes)
}
