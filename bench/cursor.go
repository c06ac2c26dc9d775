package bench

import "time"

// The clients each cursor-mode benchmark compares, in the report's order.
// Jsonstream is the single-statement mode (fetch size 0) with its default
// CloseAuto, which cuts the connection to stop early.
var (
	// EarlyCloseNextClients: an early close on the whole table and the
	// next query on the same pool.
	EarlyCloseNextClients = []string{LibPQ, PgxStdlib, PgxNative, Jsonstream, JsonstreamCursorAuto, JsonstreamCursorFixed, JsonstreamPortal}
	// EarlyCloseTxClients: an early close inside a BeginTx transaction,
	// which needs database/sql.
	EarlyCloseTxClients = []string{LibPQ, PgxStdlib, Jsonstream, JsonstreamCursorAuto, JsonstreamCursorFixed, JsonstreamPortal}
	// ChurnClients: concurrent workers that each read a little of a large
	// result and close it, over and over, on one pool.
	ChurnClients = []string{LibPQ, PgxStdlib, Jsonstream, JsonstreamCursorAuto, JsonstreamCursorFixed, JsonstreamPortal}
	// FetchClients: complete results, and the one-row query.
	FetchClients = []string{LibPQ, Jsonstream, JsonstreamCursorAuto, JsonstreamCursorFixed, JsonstreamPortal}
	// SelectOneClients: QueryRow("SELECT 1"), jsonstream in its default
	// mode against what it wraps.
	SelectOneClients = []string{LibPQ, Jsonstream, JsonstreamPortal}
	// ProxyClients: drains and early closes through a DelayProxy.
	ProxyClients = []string{LibPQ, Jsonstream, JsonstreamCursorFixed, JsonstreamCursorAuto, JsonstreamPortal}
)

// FetchSizes are the result sizes of BenchmarkFetch; BenchmarkProxy
// leaves out the first, whose time is all round trips.
var FetchSizes = []int{1_000, 10_000, 100_000, 1_000_000}

// SizesUpTo returns the sizes of list up to rows, or rows alone when it
// is smaller than all of them.
func SizesUpTo(list []int, rows int) []int {
	var out []int
	for _, n := range list {
		if n <= rows {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = []int{rows}
	}
	return out
}

// ChurnWorkers is how many goroutines share the pool in BenchmarkChurn.
const ChurnWorkers = 4

// ChurnRows is how many rows each query of BenchmarkChurn reads before
// it closes the rows.
const ChurnRows = 100

// ChurnTime is how long BenchmarkChurn's workers keep starting queries
// (a tenth of it under -short).
const ChurnTime = 4 * time.Second

// ProxyDelay is what the DelayProxy of BenchmarkProxy adds to each
// direction: a 2 ms round trip, as between machines in one region.
const ProxyDelay = time.Millisecond
