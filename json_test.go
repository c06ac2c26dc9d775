package jsonstream

import (
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// jsonItem is the document type of the sqlmock tests.
type jsonItem struct {
	ID   int    `json:"id"`
	Name string `json:"name,omitempty"`
}

// jsonMock returns a sqlmock DB whose expectations, rows closed included,
// must all be met by the end of the test.
func jsonMock(t *testing.T) (*sql.DB, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New()
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, mock.ExpectationsWereMet())
		_ = db.Close()
	})
	return db, mock
}

// jsonDocRows is a one-column result "data" of type typ holding docs.
func jsonDocRows(typ string, docs ...driver.Value) *sqlmock.Rows {
	rows := sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("data").OfType(typ, nil))
	for _, d := range docs {
		rows.AddRow(d)
	}
	return rows
}

// jsonQuery expects one query returning rows, which must be closed, and
// runs it.
func jsonQuery(t *testing.T, rows *sqlmock.Rows) *sql.Rows {
	t.Helper()
	db, mock := jsonMock(t)
	mock.ExpectQuery("SELECT").WillReturnRows(rows).RowsWillBeClosed()
	r, err := db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	return r
}

// jsonCollect ranges over seq and returns the values before the first
// error, and that error.
func jsonCollect[T any](seq func(func(T, error) bool)) ([]T, error) {
	var out []T
	for v, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

func TestEachDecodesEveryRowInOrder(t *testing.T) {
	// jsonb arrives as []byte from lib/pq, text as string: both are read.
	rows := jsonQuery(t, jsonDocRows("JSONB",
		[]byte(`{"id":1,"name":"a"}`),
		`{"id":2,"name":"b"}`,
		[]byte(` {"id": 3} `),
	))
	got, err := jsonCollect(Each[jsonItem](rows))
	require.NoError(t, err)
	assert.Equal(t, []jsonItem{{1, "a"}, {2, "b"}, {3, ""}}, got)
}

func TestEachDecodesIntoAFreshValueEachRow(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSONB",
		[]byte(`{"id":1,"name":"a","extra":{"x":1}}`),
		[]byte(`{"id":2}`),
	))
	got, err := jsonCollect(Each[map[string]any](rows))
	require.NoError(t, err)
	require.Len(t, got, 2)
	// Decoding into the previous map would have kept name and extra.
	assert.Equal(t, map[string]any{"id": float64(2)}, got[1])
	assert.Equal(t, "a", got[0]["name"])
}

func TestEachAcceptsDocumentColumnTypes(t *testing.T) {
	for _, typ := range []string{"JSON", "JSONB", "TEXT", "VARCHAR", "jsonb", ""} {
		t.Run("type="+typ, func(t *testing.T) {
			rows := jsonQuery(t, jsonDocRows(typ, []byte(`{"id":7}`)))
			got, err := jsonCollect(Each[jsonItem](rows))
			require.NoError(t, err)
			assert.Equal(t, []jsonItem{{ID: 7}}, got)
		})
	}
}

func TestEachChecksShapeBeforeFirstRow(t *testing.T) {
	col := sqlmock.NewColumn
	cases := []struct {
		name    string
		rows    *sqlmock.Rows
		opts    []JSONOption
		want    ColumnError
		message []string
	}{{
		name: "two columns",
		rows: sqlmock.NewRowsWithColumnDefinition(col("id").OfType("INT4", 0), col("data").OfType("JSONB", nil)).
			AddRow(1, []byte(`{}`)),
		want:    ColumnError{Reason: "want 1 column, got 2 (id, data); name the document column with Column"},
		message: []string{"jsonstream: ", "got 2", "id, data", "Column"},
	}, {
		name:    "wrong type",
		rows:    sqlmock.NewRowsWithColumnDefinition(col("n").OfType("INT4", 0)).AddRow(1),
		want:    ColumnError{Column: "n", DatabaseType: "INT4", Reason: "want a json, jsonb, text or varchar column"},
		message: []string{`jsonstream: column "n" (INT4)`},
	}, {
		name:    "bpchar is not a document type",
		rows:    sqlmock.NewRowsWithColumnDefinition(col("code").OfType("BPCHAR", "")).AddRow("{}"),
		want:    ColumnError{Column: "code", DatabaseType: "BPCHAR", Reason: "want a json, jsonb, text or varchar column"},
		message: []string{`"code" (BPCHAR)`},
	}, {
		name: "named column of the wrong type",
		rows: sqlmock.NewRowsWithColumnDefinition(col("id").OfType("INT8", 0), col("data").OfType("JSONB", nil)).
			AddRow(1, []byte(`{}`)),
		opts:    []JSONOption{WithColumn("id")},
		want:    ColumnError{Column: "id", DatabaseType: "INT8", Reason: "want a json, jsonb, text or varchar column"},
		message: []string{`column "id" (INT8)`},
	}, {
		name: "unknown name",
		rows: sqlmock.NewRowsWithColumnDefinition(col("id").OfType("INT8", 0), col("data").OfType("JSONB", nil)).
			AddRow(1, []byte(`{}`)),
		opts:    []JSONOption{WithColumn("doc")},
		want:    ColumnError{Column: "doc", Reason: "no such column in the result (id, data)"},
		message: []string{`column "doc"`, "no such column"},
	}, {
		name: "ambiguous name",
		rows: sqlmock.NewRowsWithColumnDefinition(col("data").OfType("JSONB", nil), col("data").OfType("JSONB", nil)).
			AddRow([]byte(`{}`), []byte(`{}`)),
		opts: []JSONOption{WithColumn("data")},
		want: ColumnError{Column: "data", Reason: "more than one column has this name"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rows := jsonQuery(t, tc.rows)
			got, err := jsonCollect(Each[jsonItem](rows, tc.opts...))
			assert.Empty(t, got)
			var ce *ColumnError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.want, *ce)
			for _, m := range tc.message {
				assert.Contains(t, err.Error(), m)
			}
		})
	}
}

func TestEachColumnPicksTheDocumentColumn(t *testing.T) {
	rows := jsonQuery(t, sqlmock.NewRowsWithColumnDefinition(
		sqlmock.NewColumn("id").OfType("INT8", 0),
		sqlmock.NewColumn("doc").OfType("JSONB", nil),
		sqlmock.NewColumn("note").OfType("TEXT", ""),
	).AddRow(1, []byte(`{"id":10}`), "x").AddRow(2, []byte(`{"id":20}`), nil))
	got, err := jsonCollect(Each[jsonItem](rows, WithColumn("doc")))
	require.NoError(t, err)
	assert.Equal(t, []jsonItem{{ID: 10}, {ID: 20}}, got)
}

func TestEachNullDocument(t *testing.T) {
	t.Run("error names the row", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), nil, []byte(`{"id":3}`)))
		got, err := jsonCollect(Each[jsonItem](rows))
		assert.Equal(t, []jsonItem{{ID: 1}}, got)
		require.ErrorIs(t, err, ErrNullDocument)
		var de *DocumentError
		require.ErrorAs(t, err, &de)
		assert.Equal(t, int64(2), de.Row)
		assert.Empty(t, de.Excerpt)
		assert.Equal(t, "jsonstream: row 2: NULL document", err.Error())
	})
	t.Run("SkipNull", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", nil, []byte(`{"id":2}`), nil, []byte(`{"id":4}`)))
		got, err := jsonCollect(Each[jsonItem](rows, WithSkipNull()))
		require.NoError(t, err)
		assert.Equal(t, []jsonItem{{ID: 2}, {ID: 4}}, got)
	})
	t.Run("empty text is not NULL", func(t *testing.T) {
		// Only a NULL may be skipped; an empty string is a malformed document.
		rows := jsonQuery(t, jsonDocRows("TEXT", "", `{"id":2}`))
		_, err := jsonCollect(Each[jsonItem](rows, WithSkipNull()))
		var de *DocumentError
		require.ErrorAs(t, err, &de)
		assert.Equal(t, int64(1), de.Row)
		assert.NotErrorIs(t, err, ErrNullDocument)
	})
	t.Run("skipped rows count in row numbers", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", nil, nil, []byte(`{"id":`)))
		_, err := jsonCollect(Each[jsonItem](rows, WithSkipNull()))
		var de *DocumentError
		require.ErrorAs(t, err, &de)
		assert.Equal(t, int64(3), de.Row)
	})
}

func TestEachMalformedDocumentStopsWithRowAndExcerpt(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("TEXT", `{"id":1}`, `{"id":2, oops}`, `{"id":3}`))
	var got []jsonItem
	var errs []error
	for v, err := range Each[jsonItem](rows) {
		if err != nil {
			assert.False(t, rows.Next(), "rows are closed when the error arrives")
			errs = append(errs, err)
			continue // the sequence must end by itself
		}
		got = append(got, v)
	}
	assert.Equal(t, []jsonItem{{ID: 1}}, got)
	require.Len(t, errs, 1)
	var de *DocumentError
	require.ErrorAs(t, errs[0], &de)
	assert.Equal(t, int64(2), de.Row)
	assert.Equal(t, `{"id":2, oops}`, de.Excerpt)
	var syn *json.SyntaxError
	require.ErrorAs(t, errs[0], &syn)
	assert.Equal(t, `jsonstream: row 2: invalid character 'o' looking for beginning of object key string in document "{\"id\":2, oops}"`, errs[0].Error())
}

// TestEachInvalidUTF8: a document that is not valid UTF-8 stops Each with
// a *DocumentError, where json.Unmarshal alone would decode it with U+FFFD
// in place of the bad bytes; a raw T takes it as it is, unchecked.
func TestEachInvalidUTF8(t *testing.T) {
	doc := "{\"id\":1,\"name\":\"a\xffb\"}"
	var direct jsonItem
	require.NoError(t, json.Unmarshal([]byte(doc), &direct), "json.Unmarshal refuses it: not the case this test is about")
	for _, typ := range []string{"TEXT", "JSONB"} {
		_, err := jsonCollect(Each[jsonItem](jsonQuery(t, jsonDocRows(typ, doc))))
		var de *DocumentError
		require.ErrorAs(t, err, &de, typ)
		assert.Equal(t, int64(1), de.Row)
		assert.ErrorIs(t, err, errInvalidUTF8)
		_, err = jsonCollect(Each[any](jsonQuery(t, jsonDocRows(typ, doc))))
		assert.ErrorIs(t, err, errInvalidUTF8)
	}
	raw, err := jsonCollect(Each[json.RawMessage](jsonQuery(t, jsonDocRows("TEXT", doc))))
	require.NoError(t, err)
	assert.Equal(t, []json.RawMessage{json.RawMessage(doc)}, raw)
}

// TestEachJSONNull: a JSON null document decodes as json.Unmarshal
// decodes it: the zero T, a nil pointer for *T, which tells it apart.
func TestEachJSONNull(t *testing.T) {
	got, err := jsonCollect(Each[jsonItem](jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte("null")))))
	require.NoError(t, err)
	assert.Equal(t, []jsonItem{{ID: 1}, {}}, got)
	ptrs, err := jsonCollect(Each[*jsonItem](jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte("null")))))
	require.NoError(t, err)
	require.Len(t, ptrs, 2)
	assert.Equal(t, &jsonItem{ID: 1}, ptrs[0])
	assert.Nil(t, ptrs[1])
}

func TestEachDocumentOfTheWrongShape(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":"one"}`)))
	_, err := jsonCollect(Each[jsonItem](rows))
	var de *DocumentError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, int64(1), de.Row)
	var te *json.UnmarshalTypeError
	assert.ErrorAs(t, err, &te)
}

func TestEachValueOfAnotherType(t *testing.T) {
	// A driver that reports no type name is trusted until a value says
	// otherwise.
	rows := jsonQuery(t, jsonDocRows("", []byte(`{"id":1}`), time.Unix(0, 0)))
	got, err := jsonCollect(Each[jsonItem](rows))
	assert.Len(t, got, 1)
	var de *DocumentError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, int64(2), de.Row)
	assert.Contains(t, err.Error(), "time.Time")
}

func TestEachBreakClosesRows(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), []byte(`{"id":3}`)))
	var got []jsonItem
	for v, err := range Each[jsonItem](rows) {
		require.NoError(t, err)
		got = append(got, v)
		break
	}
	assert.Equal(t, []jsonItem{{ID: 1}}, got)
	// Closed already: Next reports no row and no error.
	assert.False(t, rows.Next())
	assert.NoError(t, rows.Err())
}

func TestEachPanicInLoopClosesRows(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)))
	assert.PanicsWithValue(t, "boom", func() {
		for _, err := range Each[jsonItem](rows) {
			assert.NoError(t, err)
			panic("boom")
		}
	})
	assert.False(t, rows.Next())
}

func TestEachPanicInUnmarshalClosesRows(t *testing.T) {
	// The decoder runs while database/sql holds the rows' lock; its panic
	// must not leave that lock held, or closing the rows would hang.
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`)))
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		for _, err := range Each[jsonItem](rows, WithUnmarshal(func([]byte, any) error { panic("decoder") })) {
			t.Errorf("the sequence went on after the decoder panicked: %v", err)
		}
	}()
	select {
	case p := <-done:
		assert.Equal(t, "decoder", p)
	case <-time.After(5 * time.Second):
		t.Fatal("Each did not return after a panic in the decoder")
	}
}

func TestEachWithUnmarshal(t *testing.T) {
	var seen []string
	decode := func(data []byte, v any) error {
		seen = append(seen, string(data))
		if string(data) == "bad" {
			return errors.New("custom: bad")
		}
		p, ok := v.(*jsonItem)
		if !ok {
			return fmt.Errorf("v is %T", v)
		}
		p.ID = len(data)
		return nil
	}
	rows := jsonQuery(t, jsonDocRows("TEXT", "ab", "abc", "bad", "x"))
	got, err := jsonCollect(Each[jsonItem](rows, WithUnmarshal(decode)))
	assert.Equal(t, []jsonItem{{ID: 2}, {ID: 3}}, got)
	assert.Equal(t, []string{"ab", "abc", "bad"}, seen)
	var de *DocumentError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, int64(3), de.Row)
	assert.Equal(t, "bad", de.Excerpt)
	assert.EqualError(t, de.Err, "custom: bad")
}

func TestEachRawDocumentsAreCopies(t *testing.T) {
	// sqlmock overwrites the bytes it handed out at the next Next, as
	// lib/pq reuses its read buffer: kept aliases would show it.
	docs := []string{`{"id":1}`, `{ "id" : 2 }`, `[1,2,3]`, `not json`}
	mock := func() *sqlmock.Rows {
		rows := jsonDocRows("JSON")
		for _, d := range docs {
			rows.AddRow([]byte(d))
		}
		return rows
	}
	t.Run("json.RawMessage", func(t *testing.T) {
		got, err := jsonCollect(Each[json.RawMessage](jsonQuery(t, mock())))
		require.NoError(t, err)
		require.Len(t, got, len(docs))
		for i, d := range docs {
			assert.Equal(t, d, string(got[i]))
		}
	})
	t.Run("[]byte", func(t *testing.T) {
		got, err := jsonCollect(Each[[]byte](jsonQuery(t, mock())))
		require.NoError(t, err)
		require.Len(t, got, len(docs))
		for i, d := range docs {
			assert.Equal(t, d, string(got[i]))
		}
	})
}

func TestEachRowsErrorEndsIteration(t *testing.T) {
	boom := errors.New("network gone")
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), []byte(`{"id":3}`)).RowError(2, boom))
	got, err := jsonCollect(Each[jsonItem](rows))
	assert.Equal(t, []jsonItem{{ID: 1}, {ID: 2}}, got)
	assert.ErrorIs(t, err, boom)
}

func TestJSONOptionsAreChecked(t *testing.T) {
	cases := []struct {
		opt  JSONOption
		want string
	}{
		{WithColumn(""), `jsonstream: invalid option: WithColumn(""): empty name`},
		{WithUnmarshal(nil), "jsonstream: invalid option: WithUnmarshal(nil): nil function"},
		{WithFlushEvery(0), "jsonstream: invalid option: WithFlushEvery(0): must be positive"},
		{WithFlushEvery(-3), "jsonstream: invalid option: WithFlushEvery(-3): must be positive"},
		{nil, "jsonstream: invalid option: nil JSONOption"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{}`)))
			got, err := jsonCollect(Each[jsonItem](rows, WithSkipNull(), tc.opt))
			assert.Empty(t, got)
			require.ErrorIs(t, err, ErrInvalidOption)
			assert.EqualError(t, err, tc.want)
		})
	}
}

func TestEachNilRows(t *testing.T) {
	_, err := jsonCollect(Each[jsonItem](nil))
	assert.EqualError(t, err, "jsonstream: nil *sql.Rows")
}

func TestEachRangedTwice(t *testing.T) {
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`)))
	seq := Each[jsonItem](rows)
	got, err := jsonCollect(seq)
	require.NoError(t, err)
	assert.Len(t, got, 1)
	got, err = jsonCollect(seq)
	assert.Empty(t, got)
	assert.Error(t, err, "the rows are spent")
}

func TestForEach(t *testing.T) {
	t.Run("every row", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)))
		var got []jsonItem
		require.NoError(t, ForEach(rows, func(v jsonItem) error {
			got = append(got, v)
			return nil
		}))
		assert.Equal(t, []jsonItem{{ID: 1}, {ID: 2}}, got)
	})
	t.Run("callback error stops and is returned as is", func(t *testing.T) {
		stop := errors.New("enough")
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`), []byte(`{"id":3}`)))
		calls := 0
		err := ForEach(rows, func(jsonItem) error {
			calls++
			return stop
		})
		assert.Same(t, stop, err)
		assert.Equal(t, 1, calls)
	})
	t.Run("document error", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), nil))
		err := ForEach(rows, func(jsonItem) error { return nil })
		var de *DocumentError
		require.ErrorAs(t, err, &de)
		assert.Equal(t, int64(2), de.Row)
	})
	t.Run("panic in callback closes rows", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`), []byte(`{"id":2}`)))
		assert.PanicsWithValue(t, "boom", func() {
			_ = ForEach(rows, func(jsonItem) error { panic("boom") })
		})
	})
	t.Run("nil callback", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", []byte(`{"id":1}`)))
		err := ForEach[jsonItem](rows, nil)
		assert.ErrorIs(t, err, ErrInvalidOption)
	})
	t.Run("options", func(t *testing.T) {
		rows := jsonQuery(t, jsonDocRows("JSONB", nil, []byte(`{"id":2}`)))
		var got []jsonItem
		require.NoError(t, ForEach(rows, func(v jsonItem) error {
			got = append(got, v)
			return nil
		}, WithSkipNull()))
		assert.Equal(t, []jsonItem{{ID: 2}}, got)
	})
}

func TestJSONExcerpt(t *testing.T) {
	long := `{"items":[` + strings.Repeat(`"abcdefgh",`, 20) + `"end"]}`
	cases := []struct {
		name string
		doc  string
		off  int
		want string
	}{
		{"short", `{"a":1}`, -1, `{"a":1}`},
		{"exactly the limit", strings.Repeat("a", 64), -1, strings.Repeat("a", 64)},
		{"cut", strings.Repeat("a", 65), -1, strings.Repeat("a", 61) + "..."},
		{"offset near the start", long, 20, long[:61] + "..."},
		{"offset far in", long, 120, "..." + long[78:136] + "..."},
		{"offset at the end", long, len(long), "..." + long[len(long)-61:]},
		{"invalid UTF-8", "{\"a\":\"\xff\xfe\"}", -1, "{\"a\":\"\uFFFD\uFFFD\"}"},
		{"multi-byte runes are not split", strings.Repeat("é", 40), -1, strings.Repeat("é", 30) + "..."},
		{"empty", "", -1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := excerpt([]byte(tc.doc), tc.off)
			assert.Equal(t, tc.want, got)
			assert.LessOrEqual(t, len(got), maxExcerpt)
			assert.True(t, utf8.ValidString(got))
		})
	}
}

func TestEachErrorShowsTheSpotOfALongDocument(t *testing.T) {
	doc := `{"items":[` + strings.Repeat(`{"n":1},`, 40) + `{"n":?}]}`
	rows := jsonQuery(t, jsonDocRows("JSONB", []byte(doc)))
	_, err := jsonCollect(Each[map[string]any](rows))
	var de *DocumentError
	require.ErrorAs(t, err, &de)
	assert.Contains(t, de.Excerpt, `{"n":?}`)
	assert.True(t, strings.HasPrefix(de.Excerpt, "..."), de.Excerpt)
	assert.LessOrEqual(t, len(de.Excerpt), maxExcerpt)
}

// TestDeprecatedJSONOptionNames: Column and SkipNull, the options' former
// names, still work as WithColumn and WithSkipNull.
func TestDeprecatedJSONOptionNames(t *testing.T) {
	rows := jsonQuery(t, sqlmock.NewRowsWithColumnDefinition(
		sqlmock.NewColumn("id").OfType("INT8", 0),
		sqlmock.NewColumn("doc").OfType("JSONB", nil)).
		AddRow(1, nil).AddRow(2, []byte(`{"name":"b"}`)))
	got, err := jsonCollect(Each[jsonItem](rows, Column("doc"), SkipNull())) //nolint:staticcheck // the deprecated names are what this tests
	require.NoError(t, err)
	assert.Len(t, got, 1)
}
