package jsonstream

import (
	"context"
	"database/sql/driver"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCursorColumnTypesWithoutInnerInterfaces: over inner rows that
// implement none of the optional column type interfaces (the scripted
// server's FETCH rows), a cursor-backed stream reports what database/sql
// reports for such rows: no length, no nullability, no precision, no type
// name, and a scan type of any.
func TestCursorColumnTypesWithoutInnerInterfaces(t *testing.T) {
	d := &scriptDB{rows: 3}
	db := openScript(t, d, WithFetchSize(10))
	rows, err := db.Query("SELECT data FROM docs")
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.ColumnTypes()
	require.NoError(t, err)
	require.Len(t, cols, 1)
	col := cols[0]

	length, ok := col.Length()
	assert.False(t, ok, "Length reported ok")
	assert.Zero(t, length)
	_, ok = col.Nullable()
	assert.False(t, ok, "Nullable reported ok")
	_, _, ok = col.DecimalSize()
	assert.False(t, ok, "DecimalSize reported ok")
	assert.Empty(t, col.DatabaseTypeName())
	assert.Equal(t, reflect.TypeFor[any](), col.ScanType())
	assert.Equal(t, 3, drainRows(t, rows))
}

// TestCursorTxContextEndStopsNextFetch: between two batches, a
// transaction whose context ended gets no further FETCH: Next fails with
// the context's error. On an inner connection jsonstream did not dial,
// where no watch fails the stream, and at the driver level, where
// database/sql's own watch of the context does not close the rows first.
func TestCursorTxContextEndStopsNextFetch(t *testing.T) {
	d := &scriptDB{rows: 5}
	s := defaultSettings()
	require.NoError(t, s.apply([]Option{WithFetchSize(2)}))
	inner, err := d.Open("")
	require.NoError(t, err)
	c := newConn(inner, &s, nil)
	txCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx, err := c.BeginTx(txCtx, driver.TxOptions{})
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	dr, err := c.QueryContext(context.Background(), "SELECT data FROM docs", nil)
	require.NoError(t, err)
	defer dr.Close()
	dest := make([]driver.Value, 1)
	for i := 0; i < 2; i++ {
		require.NoError(t, dr.Next(dest))
	}
	cancel()
	assert.ErrorIs(t, dr.Next(dest), context.Canceled)
	assert.Equal(t, []string{
		"DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 2 FROM jsonstream_cursor_1",
	}, d.statements(), "a FETCH after the transaction's context ended")
}
