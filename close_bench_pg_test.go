package jsonstream

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
)

// BenchmarkEarlyClose: Close after the first of n rows, jsonstream
// against lib/pq on the same server and data. The number it protects:
// jsonstream's ns/op stays flat as n grows, lib/pq's grows with n.
func BenchmarkEarlyClose(b *testing.B) {
	needRowsTable(b)
	sizes := []int{10_000, 100_000, 1_000_000}
	if testing.Short() {
		sizes = []int{10_000}
	}
	for _, n := range sizes {
		for _, name := range []string{"postgres", DriverName} {
			db := openPG(b, name, "")
			b.Run("rows="+strconv.Itoa(n)+"/driver="+name, func(b *testing.B) {
				b.StopTimer()
				for i := 0; i < b.N; i++ {
					rows, err := db.Query(bigQuery, n)
					if err != nil {
						b.Fatal(err)
					}
					if !rows.Next() {
						b.Fatal(rows.Err())
					}
					b.StartTimer()
					if err := rows.Close(); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
				}
			})
		}
	}
}

// BenchmarkCloseCosts measures the two sides of CloseAuto's choice: a
// query that needs a new connection (what cutting costs the next query)
// against draining rows with lib/pq (what draining costs Close). The
// drain timeout is chosen so that a drain is cut off well before it would
// cost more than a reconnect.
func BenchmarkCloseCosts(b *testing.B) {
	needRowsTable(b)
	b.Run("query-on-new-connection", func(b *testing.B) {
		db := openPG(b, DriverName, "")
		db.SetMaxIdleConns(0)
		var one int
		for i := 0; i < b.N; i++ {
			if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("query-on-pooled-connection", func(b *testing.B) {
		db := openPG(b, DriverName, "")
		var one int
		for i := 0; i < b.N; i++ {
			if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run("drain-rows="+strconv.Itoa(n), func(b *testing.B) {
			db := openPG(b, "postgres", "")
			conn, err := db.Conn(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				rows, err := conn.QueryContext(context.Background(), bigQuery, n)
				if err != nil {
					b.Fatal(err)
				}
				var g int
				var pad sql.RawBytes
				if !rows.Next() || rows.Scan(&g, &pad) != nil {
					b.Fatal(rows.Err())
				}
				b.StartTimer()
				if err := rows.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSmallQuery: a one-row query against the server, lib/pq against
// jsonstream, with a context that cannot end and with one that can. The
// numbers it protects: allocs/op. With a cancellable context jsonstream
// arms a context.AfterFunc (so that a stalled network cannot hold Next),
// on top of the goroutine lib/pq starts for such contexts anyway.
func BenchmarkSmallQuery(b *testing.B) {
	for _, ctxName := range []string{"background", "cancellable"} {
		for _, name := range []string{"postgres", DriverName} {
			db := openPG(b, name, "")
			b.Run("ctx="+ctxName+"/driver="+name, func(b *testing.B) {
				ctx := context.Background()
				if ctxName == "cancellable" {
					var cancel context.CancelFunc
					ctx, cancel = context.WithCancel(ctx)
					defer cancel()
				}
				b.ReportAllocs()
				var v int
				for i := 0; i < b.N; i++ {
					if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&v); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
