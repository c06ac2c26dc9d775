package jsonstream

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
)

// queryAll runs q and reads every row, as a consumer would.
func queryAll(tb testing.TB, db *sql.DB, args ...any) {
	rows, err := db.QueryContext(context.Background(), "q", args...)
	if err != nil {
		tb.Fatal(err)
	}
	readAll(tb, rows)
}

// queryPausedOnce is queryAll with a Stream that pauses and resumes once.
func queryPausedOnce(tb testing.TB, db *sql.DB) {
	s, err := NewStream()
	if err != nil {
		tb.Fatal(err)
	}
	rows, err := db.QueryContext(context.Background(), "q", s)
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Pause(); err != nil {
		tb.Fatal(err)
	}
	if err := s.Resume(); err != nil {
		tb.Fatal(err)
	}
	readAll(tb, rows)
}

func readAll(tb testing.TB, rows *sql.Rows) {
	var v sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&v); err != nil {
			tb.Fatal(err)
		}
	}
	if err := rows.Close(); err != nil {
		tb.Fatal(err)
	}
}

// fakeDBs returns the same fake database twice: raw and through jsonstream.
func fakeDBs(tb testing.TB, n int) (inner, wrapped *sql.DB) {
	rowsOf := func(string) *fakeRows { return &fakeRows{n: n} }
	inner = sql.OpenDB(&fakeDriver{newRows: rowsOf, noLog: true})
	tb.Cleanup(func() { _ = inner.Close() })
	wrapped, d := openFake(tb, rowsOf)
	d.noLog = true
	return inner, wrapped
}

// TestNeverPausedQueryAllocs holds the budget of the never-paused path: at
// most one allocation per query more than the inner driver alone (the
// rows wrapper itself; the state and counters live inside it).
func TestNeverPausedQueryAllocs(t *testing.T) {
	for _, n := range []int{1, 100} {
		inner, wrapped := fakeDBs(t, n)
		queryAll(t, inner) // warm the pools
		queryAll(t, wrapped)
		base := testing.AllocsPerRun(200, func() { queryAll(t, inner) })
		got := testing.AllocsPerRun(200, func() { queryAll(t, wrapped) })
		t.Logf("rows=%d: inner %.0f allocs/query, jsonstream %.0f", n, base, got)
		if got > base+1 {
			t.Errorf("rows=%d: jsonstream adds %.0f allocations per query; the budget is 1", n, got-base)
		}
	}
}

// BenchmarkOverhead shows what jsonstream costs per query over the inner
// driver (an in-memory fake, so no database noise): never paused, and
// paused once (NewStream, the first Pause allocating the pause machinery,
// Resume).
func BenchmarkOverhead(b *testing.B) {
	for _, n := range []int{1, 100} {
		inner, wrapped := fakeDBs(b, n)
		name := "rows=" + strconv.Itoa(n)
		b.Run(name+"/inner", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				queryAll(b, inner)
			}
		})
		b.Run(name+"/jsonstream", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				queryAll(b, wrapped)
			}
		})
		b.Run(name+"/jsonstream-paused-once", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				queryPausedOnce(b, wrapped)
			}
		})
	}
}
