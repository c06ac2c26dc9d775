package bench

import "time"

// The clients each mode benchmark compares, in the report's order.
// Jsonstream is the default: portal streams for reads. JsonstreamSingle
// pins the single-statement mode, whose early Close (CloseAuto) cuts the
// connection; the cursor modes and the portal mode keep it.
var (
	// EarlyCloseNextClients: an early close on the whole table and the
	// next query on the same pool.
	EarlyCloseNextClients = []string{LibPQ, PgxStdlib, PgxNative, Jsonstream, JsonstreamSingle, JsonstreamCursorAuto, JsonstreamCursorFixed}
	// EarlyCloseTxClients: an early close inside a BeginTx transaction,
	// which needs database/sql.
	EarlyCloseTxClients = []string{LibPQ, PgxStdlib, Jsonstream, JsonstreamSingle, JsonstreamCursorAuto, JsonstreamCursorFixed}
	// EarlyCloseBeginClients: an early close inside a transaction begun
	// with Exec("BEGIN") on a sql.Conn, which database/sql does not know
	// of and jsonstream learns from the server.
	EarlyCloseBeginClients = []string{LibPQ, PgxStdlib, Jsonstream, JsonstreamSingle, JsonstreamCursorAuto, JsonstreamCursorFixed}
	// ChurnClients: concurrent workers that each read a little of a large
	// result and close it, over and over, on one pool.
	ChurnClients = []string{LibPQ, PgxStdlib, Jsonstream, JsonstreamSingle, JsonstreamCursorAuto, JsonstreamCursorFixed}
	// FetchClients: complete results, and the one-row query.
	FetchClients = []string{LibPQ, Jsonstream, JsonstreamSingle, JsonstreamCursorAuto, JsonstreamCursorFixed}
	// SelectOneClients: QueryRow("SELECT 1"), jsonstream in its default
	// mode and in the single-statement mode against what it wraps.
	SelectOneClients = []string{LibPQ, Jsonstream, JsonstreamSingle}
	// ProxyClients: drains and early closes through a DelayProxy.
	ProxyClients = []string{LibPQ, Jsonstream, JsonstreamSingle, JsonstreamCursorFixed, JsonstreamCursorAuto}
	// ProxyWindowClients: how long the server waits for the client while
	// draining through a DelayProxy.
	ProxyWindowClients = []string{LibPQ, Jsonstream, JsonstreamCursorAuto}
)

// The queries of BenchmarkQueryRowPaired, which runs each through lib/pq
// and through jsonstream's default mode in the same process, back to
// back, so that their ratio is taken within one round.
const (
	// PairedSelectOne is QueryRow("SELECT 1") outside a transaction: a
	// simple Query for lib/pq.
	PairedSelectOne = "select1"
	// PairedArg is QueryRow("SELECT $1::int", n): lib/pq's extended
	// protocol, a Parse and then a Bind.
	PairedArg = "arg"
	// PairedSelectOneTx is QueryRow("SELECT 1") inside a BeginTx
	// transaction, where a portal may end its first batch with Sync.
	PairedSelectOneTx = "select1-tx"
	// PairedArgCtx is PairedArg with a context that can end, as a
	// request's: each client then watches it while the query runs.
	PairedArgCtx = "arg-ctx"
)

// The paired queries whose result the text does not bound (a lookup by
// primary key), which a portal stream in autocommit ends with a Sync of
// its own: measured beside the goals, not judged by them.
const (
	// PairedLookup is QueryRow("SELECT id FROM <table> WHERE id = $1", n):
	// two round trips for both clients.
	PairedLookup = "lookup"
	// PairedLookupLiteral is QueryRow("SELECT id FROM <table> WHERE id =
	// 1"): a simple Query for lib/pq, one round trip against the portal's
	// two.
	PairedLookupLiteral = "lookup-literal"
)

// PairedQueries are the sub-benchmarks of BenchmarkQueryRowPaired, in the
// report's order.
var PairedQueries = []string{PairedSelectOne, PairedArg, PairedSelectOneTx, PairedArgCtx, PairedLookup, PairedLookupLiteral}

// PairedGoal reports whether a paired query's ratios are judged by the
// QueryRow goal.
func PairedGoal(query string) bool {
	return query != PairedLookup && query != PairedLookupLiteral
}

// PairedClients are the two sides of BenchmarkQueryRowPaired: the
// baseline first.
var PairedClients = [2]string{LibPQ, Jsonstream}

// PairedRounds is how many rounds of BenchmarkQueryRowPaired each process
// of cmd/report runs (go test -count): a round is one run of the
// benchmark, both clients in it, and gives one ratio. With 21 rounds the
// 95% interval of their median leaves out the five most extreme rounds
// at either end, so that a few rounds disturbed by the machine move
// neither the median nor the interval.
const PairedRounds = 21

// PairedBenchtime is the -benchtime of one round of
// BenchmarkQueryRowPaired: long enough for a thousand queries a side, so
// that PairedRounds of them cost seconds, not minutes.
const PairedBenchtime = "100ms"

// PairedBlock is how many queries one side runs before the other takes
// over, within a round: short enough that a drift of the machine falls
// on both, long enough that reading the clock and the CPU time in
// between costs nothing measurable.
const PairedBlock = 16

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
