package bench

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream"
)

// The fake driver answers every query with n rows of one text column
// holding the same document, with no I/O and, per row, no allocation, so
// that all the time and allocations measured belong to database/sql and
// the wrapper.

// document is the value of every fake row: as long as a dataset document.
var document = []byte(`{"id": 1, "name": "Grace Hopper", "tags": ["beta", "green"], "email": "user1@example.com", "score": 79.19, "active": true, "address": {"city": "Berlin", "street": "32 Oak Avenue", "country": "DE", "postcode": "00007"}, "version": 2, "created_at": "2020-01-01T00:00:17Z"}`)

// documentValue is document boxed once: storing a []byte in dest would
// allocate its interface header on every row.
var documentValue driver.Value = document

var fakeColumns = []string{"data"}

var errFakePrepare = errors.New("fake driver: Prepare is not supported")

type fakeConnector struct{ rows int }

func (c fakeConnector) Connect(context.Context) (driver.Conn, error) { return fakeConn(c), nil }
func (c fakeConnector) Driver() driver.Driver                        { return fakeDriver{} }

type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) { return fakeConn{}, nil }

type fakeConn struct{ rows int }

func (fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errFakePrepare }
func (fakeConn) Close() error                        { return nil }
func (fakeConn) Begin() (driver.Tx, error)           { return nil, errFakePrepare }

// QueryContext implements driver.QueryerContext, so database/sql queries
// without preparing.
func (c fakeConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &fakeRows{left: c.rows}, nil
}

type fakeRows struct{ left int }

func (r *fakeRows) Columns() []string { return fakeColumns }
func (r *fakeRows) Close() error      { return nil }

func (r *fakeRows) Next(dest []driver.Value) error {
	if r.left == 0 {
		return io.EOF
	}
	r.left--
	dest[0] = documentValue
	return nil
}

// overheadVariant runs one query and reads all its rows.
type overheadVariant struct {
	name string
	// wrap says whether the query goes through jsonstream, with opts.
	wrap  bool
	query func(b *testing.B, db *sql.DB)
	opts  []jsonstream.Option
}

var overheadVariants = []overheadVariant{
	{"inner", false, func(b *testing.B, db *sql.DB) { readAll(b, db, nil, nil) }, nil},
	{"jsonstream", true, func(b *testing.B, db *sql.DB) { readAll(b, db, nil, nil) }, nil},
	// The Stream argument alone, without a pause: what the handle and its
	// binding cost, to tell them from the pause machinery below.
	{"jsonstream-stream-arg", true, func(b *testing.B, db *sql.DB) {
		readAll(b, db, newStream(b), nil)
	}, nil},
	// The Stream through the context instead: one allocation more, the
	// context itself.
	{"jsonstream-context-stream", true, func(b *testing.B, db *sql.DB) {
		readAllContext(jsonstream.ContextWithStream(context.Background(), newStream(b)), b, db, nil, nil)
	}, nil},
	// Options in a context made once, as a request's: what each query
	// pays to find and apply them.
	{"jsonstream-context-options", true, func(b *testing.B, db *sql.DB) {
		readAllContext(contextWithOptions, b, db, nil, nil)
	}, nil},
	// A Stream, one Pause (which allocates the pause machinery) and one
	// Resume per query.
	{"jsonstream-paused-once", true, func(b *testing.B, db *sql.DB) {
		s := newStream(b)
		readAll(b, db, s, func() {
			if err := s.Pause(); err != nil {
				b.Fatal(err)
			}
			if err := s.Resume(); err != nil {
				b.Fatal(err)
			}
		})
	}, nil},
	// An Observer on the connector that counts the events, as a metrics
	// observer would: what the events cost (never paused: started, first
	// row, ended).
	{"jsonstream-observed", true, func(b *testing.B, db *sql.DB) { readAll(b, db, nil, nil) },
		[]jsonstream.Option{jsonstream.WithObserver(&eventCounter{})}},
	// The same with a pause, which adds the paused and resumed events.
	{"jsonstream-observed-paused-once", true, func(b *testing.B, db *sql.DB) {
		s := newStream(b)
		readAll(b, db, s, func() {
			if err := s.Pause(); err != nil {
				b.Fatal(err)
			}
			if err := s.Resume(); err != nil {
				b.Fatal(err)
			}
		})
	}, []jsonstream.Option{jsonstream.WithObserver(&eventCounter{})}},
}

// eventCounter counts a stream's events by kind, and the rows of the
// streams that ended.
type eventCounter struct {
	kinds [jsonstream.EventEnded + 1]atomic.Int64 // events come from any goroutine
	rows  atomic.Int64
}

func (c *eventCounter) ObserveStream(e jsonstream.Event) {
	c.kinds[e.Kind].Add(1)
	if e.Kind == jsonstream.EventEnded {
		c.rows.Add(e.Stats.Rows)
	}
}

func newStream(b *testing.B) *jsonstream.Stream {
	s, err := jsonstream.NewStream()
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// readAll queries db, with s as the Stream argument unless it is nil,
// calls between (if not nil) before the first row, and reads every row as
// the real-server benchmarks do.
func readAll(b *testing.B, db *sql.DB, s *jsonstream.Stream, between func()) {
	readAllContext(context.Background(), b, db, s, between)
}

// contextWithOptions carries the options of jsonstream-context-options.
var contextWithOptions = func() context.Context {
	ctx, err := jsonstream.ContextWithOptions(context.Background(),
		jsonstream.WithPauseTimeout(time.Minute), jsonstream.WithCloseMode(jsonstream.CloseDrain))
	if err != nil {
		panic(err)
	}
	return ctx
}()

// readAllContext is readAll with the query's context.
func readAllContext(ctx context.Context, b *testing.B, db *sql.DB, s *jsonstream.Stream, between func()) {
	var rows *sql.Rows
	var err error
	if s != nil {
		rows, err = db.QueryContext(ctx, "q", s)
	} else {
		rows, err = db.QueryContext(ctx, "q")
	}
	if err != nil {
		b.Fatal(err)
	}
	if between != nil {
		between()
	}
	var data sql.RawBytes
	dest := []any{&data}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			b.Fatal(err)
		}
	}
	if err := rows.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOverhead protects the per-query cost of the wrapper over the
// inner driver (ns/op, cpu-ns/op, allocs/op), and so the claim that a never-paused query carries no
// pause machinery: allocs/op of jsonstream minus inner, and of
// jsonstream-paused-once minus jsonstream-stream-arg (the pause machinery,
// allocated by the first Pause). The inner driver is an in-memory fake, so
// no database noise hides either.
func BenchmarkOverhead(b *testing.B) {
	for _, n := range []int{1, 100} {
		for _, v := range overheadVariants {
			b.Run("rows="+strconv.Itoa(n)+"/"+v.name, func(b *testing.B) {
				var connector driver.Connector = fakeConnector{rows: n}
				if v.wrap {
					c, err := jsonstream.NewConnector(connector, v.opts...)
					if err != nil {
						b.Fatal(err)
					}
					connector = c
				}
				db := sql.OpenDB(connector)
				defer db.Close()
				v.query(b, db) // opens the connection and fills database/sql's pools
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				for i := 0; i < b.N; i++ {
					v.query(b, db)
				}
				// CPU time resists other processes' load better than ns/op
				// does: time spent preempted is not counted.
				if cpu := processCPU() - cpu; cpu > 0 {
					b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
				}
			})
		}
	}
}

// TestFakeDriver checks that the fake delivers its rows and allocates
// nothing per row, since every allocation it made would be counted
// against jsonstream's share of the overhead.
func TestFakeDriver(t *testing.T) {
	for _, v := range overheadVariants {
		db := sql.OpenDB(fakeConnector{rows: 3})
		if v.wrap {
			c, err := jsonstream.NewConnector(fakeConnector{rows: 3}, v.opts...)
			if err != nil {
				t.Fatal(err)
			}
			db = sql.OpenDB(c)
		}
		rows, err := db.Query("q")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			got = append(got, s)
		}
		if err := rows.Close(); err != nil {
			t.Error(err)
		}
		if len(got) != 3 || strings.Join(got, "") != strings.Repeat(string(document), 3) {
			t.Errorf("%s: got %d rows %q", v.name, len(got), got)
		}
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	}
	r := &fakeRows{left: 1 << 30}
	dest := make([]driver.Value, 1)
	if a := testing.AllocsPerRun(1000, func() { _ = r.Next(dest) }); a != 0 {
		t.Errorf("fake Next allocates %v times per row", a)
	}
}
