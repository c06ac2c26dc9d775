package dataset

import (
	"bytes"
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	_ "github.com/lib/pq"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// firstDocument is document 1 as the server prints it. The dataset is
// meant to stay fixed: if this changes, numbers measured before and after
// the change are not comparable.
const firstDocument = `{"id": 1, "name": "Grace Hopper", "tags": ["beta", "green"], "email": "user1@example.com", "score": 79.19, "active": true, "address": {"city": "Berlin", "street": "32 Oak Avenue", "country": "DE", "postcode": "00007"}, "version": 2, "created_at": "2020-01-01T00:00:17Z"}`

// checksum2500 is the md5 of the text of documents 1 to 2500, in order;
// it pins every document the test loads, not just the first.
const checksum2500 = "db722621cb2e7b7c2682305ecfbd9089"

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func dropTable(t *testing.T, db *sql.DB, table string) {
	t.Helper()
	t.Cleanup(func() {
		for _, q := range []string{"DROP VIEW IF EXISTS v_" + table, "DROP TABLE IF EXISTS " + table} {
			if _, err := db.Exec(q); err != nil {
				t.Error(err)
			}
		}
	})
}

// checksum returns the md5 of the text of the first n documents of table
// (all for n <= 0), read in order through Select.
func checksum(t *testing.T, db *sql.DB, table string, n int) string {
	t.Helper()
	rows, err := db.Query(Select(table, n))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	h := md5.New()
	for rows.Next() {
		var data sql.RawBytes
		if err := rows.Scan(&data); err != nil {
			t.Fatal(err)
		}
		h.Write(data)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestLoad(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	const table, n = "dataset_test_load", 2500
	dropTable(t, db, table)

	// Small chunks, so that the test sees the progress of several.
	defer func(c int) { chunkSize = c }(chunkSize)
	chunkSize = 1000
	var progress []int
	if err := Load(ctx, db, table, n, func(done int) { progress = append(progress, done) }); err != nil {
		t.Fatal(err)
	}
	if want := []int{1000, 2000, 2500}; !slices.Equal(progress, want) {
		t.Errorf("progress calls %v, want %v", progress, want)
	}
	if got, err := Loaded(ctx, db, table); err != nil || got != n {
		t.Errorf("Loaded = %d, %v; want %d", got, err, n)
	}

	rows, err := db.Query(Select(table, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var total int
	var id int64
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			t.Fatal(err)
		}
		id++
		total += len(data)
		if id == 1 && string(data) != firstDocument {
			t.Errorf("document 1:\n got %s\nwant %s", data, firstDocument)
		}
		// Every field of the document must land in Entity, or the decode
		// benchmarks would skip part of the work.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var e Entity
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("document %d: %v\n%s", id, err, data)
		}
		if e.ID != id || e.Name == "" || !strings.HasSuffix(e.Email, "@example.com") || len(e.Tags) != 2 ||
			e.CreatedAt == "" || e.Address.City == "" || e.Address.Postcode == "" || e.Version == 0 {
			t.Fatalf("document %d decoded to %+v", id, e)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if id != n {
		t.Fatalf("Select returned %d documents, want %d", id, n)
	}
	if avg := total / n; avg < 270 || avg > 290 {
		t.Errorf("documents average %d bytes, want about 280", avg)
	}
	if sum := checksum(t, db, table, 0); sum != checksum2500 {
		t.Errorf("checksum of %d documents %s, want %s", n, sum, checksum2500)
	}
	if got := checksum(t, db, table, 10); got == checksum(t, db, table, 11) {
		t.Error("LIMIT in Select has no effect")
	}
}

// TestDeterministic checks that a document depends on its id alone: on
// neither the load nor the number of documents loaded with it.
func TestDeterministic(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	const a, b = "dataset_test_a", "dataset_test_b"
	dropTable(t, db, a)
	dropTable(t, db, b)
	if err := Load(ctx, db, a, 700, nil); err != nil {
		t.Fatal(err)
	}
	first := checksum(t, db, a, 0)
	if err := Load(ctx, db, a, 700, nil); err != nil {
		t.Fatal(err)
	}
	if again := checksum(t, db, a, 0); again != first {
		t.Errorf("second load: checksum %s, first load %s", again, first)
	}
	if err := Load(ctx, db, b, 1500, nil); err != nil {
		t.Fatal(err)
	}
	if prefix := checksum(t, db, b, 700); prefix != first {
		t.Errorf("first 700 of 1500 documents: checksum %s, of 700 documents %s", prefix, first)
	}
	if got, err := Loaded(ctx, db, b); err != nil || got != 1500 {
		t.Errorf("Loaded = %d, %v; want 1500", got, err)
	}
}

func TestLoadedOtherTables(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	const table = "dataset_test_other"
	dropTable(t, db, table)
	if n, err := Loaded(ctx, db, table); err != nil || n != 0 {
		t.Errorf("missing table: Loaded = %d, %v; want 0, nil", n, err)
	}
	if _, err := db.Exec("CREATE TABLE " + table + " (id bigint primary key, data jsonb not null)"); err != nil {
		t.Fatal(err)
	}
	if n, err := Loaded(ctx, db, table); err != nil || n != 0 {
		t.Errorf("table made by hand: Loaded = %d, %v; want 0, nil", n, err)
	}
	if _, err := db.Exec("COMMENT ON TABLE " + table + " IS 'jsonstream dataset v0 n=10'"); err != nil {
		t.Fatal(err)
	}
	if n, err := Loaded(ctx, db, table); err != nil || n != 0 {
		t.Errorf("older version: Loaded = %d, %v; want 0, nil", n, err)
	}
}

func TestTableNames(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"", "Entity", "a-b", "a b", "1abc", "x;drop table y", strings.Repeat("a", 62)} {
		if err := Load(ctx, nil, name, 1, nil); err == nil {
			t.Errorf("Load(%q) accepted the name", name)
		}
		if _, err := Loaded(ctx, nil, name); err == nil {
			t.Errorf("Loaded(%q) accepted the name", name)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Select(%q) did not panic", name)
				}
			}()
			Select(name, 1)
		}()
	}
	if got, want := Select(DefaultTable, 0), "SELECT data FROM v_entity ORDER BY id"; got != want {
		t.Errorf("Select = %q, want %q", got, want)
	}
	if got, want := Select("t_1", 10), "SELECT data FROM v_t_1 ORDER BY id LIMIT 10"; got != want {
		t.Errorf("Select = %q, want %q", got, want)
	}
	if err := Load(ctx, nil, "ok", -1, nil); err == nil {
		t.Error("Load accepted a negative count")
	}
}
