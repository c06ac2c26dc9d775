package jsonstream

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// windowPortal is a long portal stream over TCP that has read bytes of
// rows of 290 bytes in elapsed after a first reply of rtt, whose last
// batch came at lastRate bytes per nanosecond, and whose next batch is
// batch rows.
func windowPortal(rtt, elapsed time.Duration, bytes int64, lastRate float64, batch int32) *portal {
	return &portal{
		conn:    &conn{sock: &sock{}},
		rtt:     rtt,
		sent:    clock() - instant(rtt+elapsed),
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
	p.sent = clock() - instant(rtt+elapsed)
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

// TestPortalRampFollowsTheLink: a stream asks for one batch at a time,
// each twice the last, until it is long; on a connection whose every Sync
// after a result read whole took portalSlowRTT or more to come back it
// keeps two Executes outstanding from its second batch, each four times
// the last, so that a result of a few thousand rows does not pay a round
// trip per doubling. A connection with no such Sync yet counts as fast.
// The first batch is small on all.
func TestPortalRampFollowsTheLink(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		name     string
		delay    time.Duration
		measured bool // a QueryRow ran before
		want     []int32
	}{
		{"fast", 0, true, []int32{16, 32, 64, 128, 256, 512, 1024}},
		{"slow", 2 * portalSlowRTT, true, []int32{16, 64, 256, 1024}},
		{"slow but not measured", 2 * portalSlowRTT, false, []int32{16, 32, 64, 128, 256, 512, 1024}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{delay: tc.delay}
			db := openDialed(t, d)
			require.NoError(t, db.Ping())
			if tc.measured {
				pidOf(t, db)
			}
			onConn(t, db, func(c *conn) {
				switch {
				case !tc.measured:
					assert.Zero(t, c.linkRTT.Load(), "no Sync came back yet")
				case tc.delay > 0:
					assert.GreaterOrEqual(t, c.linkRTT.Load(), int64(tc.delay), "the Sync's round trip")
				default:
					// On a loaded machine even a Sync may take a
					// millisecond: the link is what the shortest of a
					// longer life shows.
					c.linkRTT.Store(int64(time.Microsecond))
				}
			})
			s := d.last()
			s.recording.Store(true)
			rows, err := db.Query(bigQuery, 3000)
			require.NoError(t, err)
			require.Equal(t, 3000, drainRows(t, rows))
			got := s.executes()
			require.GreaterOrEqual(t, len(got), len(tc.want), "Executes: %v", got)
			assert.Equal(t, tc.want, got[:len(tc.want)], "Executes: %v", got)
		})
	}
}

// TestPortalWideRowsKeepTheFirstBatch: the second batch is sized from the
// first's rows: rows of 1 MB stay at the least batch (16 rows, as
// portalMaxBytes holds fewer), not twice it.
func TestPortalWideRowsKeepTheFirstBatch(t *testing.T) {
	needRowsTable(t)
	d := &fakeDialer{}
	db := openDialed(t, d)
	pidOf(t, db)
	s := d.last()
	s.recording.Store(true)
	rows, err := db.Query("SELECT repeat('x', 1000000) FROM generate_series(1, 40)")
	require.NoError(t, err)
	require.Equal(t, 40, drainRows(t, rows))
	got := s.executes()
	require.NotEmpty(t, got)
	for _, limit := range got {
		assert.Equal(t, int32(portalFirstRows), limit, "Executes: %v", got)
	}
}

// TestPortalLinkRTTIsTheShortest: a connection's link round trip is the
// shortest round trip of a Sync that ended a portal stream read whole: a
// faster one lowers it, a slower one leaves it.
func TestPortalLinkRTTIsTheShortest(t *testing.T) {
	needRowsTable(t)
	const slow = 20 * portalSlowRTT
	d := &fakeDialer{delay: slow}
	db := openDialed(t, d)
	s := d.last // after the first dial
	pidOf(t, db)
	linkRTT := func() (rtt time.Duration) {
		onConn(t, db, func(c *conn) { rtt = time.Duration(c.linkRTT.Load()) })
		return rtt
	}
	first := linkRTT()
	require.GreaterOrEqual(t, first, slow)
	s().delay.Store(0)
	for i := 0; i < 20; i++ {
		pidOf(t, db)
	}
	fast := linkRTT()
	assert.Less(t, fast, first, "a faster round trip lowers it")
	onConn(t, db, func(c *conn) { c.syncs.Store(0) }) // the next Sync is sampled
	s().delay.Store(int64(fast + slow))               // every reply slower than fast
	pidOf(t, db)
	assert.Equal(t, fast, linkRTT(), "a slower round trip leaves it")
}

// TestPortalLinkRTTSampling: a connection samples its link round trip at
// its first linkSamplesFirst Syncs that end a result read whole, then at
// one in linkSampleEvery: a faster round trip between those is not seen.
func TestPortalLinkRTTSampling(t *testing.T) {
	const slow = 20 * portalSlowRTT
	d := &fakeDialer{delay: slow}
	db := openDialed(t, d)
	s := d.last // after the first dial
	pidOf(t, db)
	var first time.Duration
	onConn(t, db, func(c *conn) {
		first = time.Duration(c.linkRTT.Load())
		c.syncs.Store(linkSamplesFirst) // past the first samples
	})
	require.GreaterOrEqual(t, first, slow)
	s().delay.Store(0)
	for i := 0; i < 5; i++ {
		pidOf(t, db)
	}
	var rtt time.Duration
	onConn(t, db, func(c *conn) {
		rtt = time.Duration(c.linkRTT.Load())
		c.syncs.Store(linkSampleEvery - 1) // the next is sampled
	})
	assert.Equal(t, first, rtt, "a Sync between the samples was sampled")
	pidOf(t, db)
	onConn(t, db, func(c *conn) { rtt = time.Duration(c.linkRTT.Load()) })
	assert.Less(t, rtt, first, "the periodic sample")
}

// onConn runs f on the jsonstream conn of db's pool of one.
func onConn(t *testing.T, db *sql.DB, f func(c *conn)) {
	t.Helper()
	sc, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer func() { require.NoError(t, sc.Close()) }()
	require.NoError(t, sc.Raw(func(dc any) error {
		f(dc.(*conn))
		return nil
	}))
}
