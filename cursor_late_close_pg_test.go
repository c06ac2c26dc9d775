package jsonstream

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCursorLateCloseKeepsConnection: a stream closed long after its last
// Next keeps its connection.
func TestCursorLateCloseKeepsConnection(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_fetch_size=1000 jsonstream_drain_timeout=100ms")
	db.SetMaxOpenConns(1)
	before := pidOf(t, db)
	for i := 0; i < 5; i++ {
		rows, err := db.Query(bigQuery, bigRows)
		require.NoError(t, err)
		require.True(t, rows.Next())
		time.Sleep(300 * time.Millisecond)
		require.NoError(t, rows.Close())
		assert.Equal(t, before, pidOf(t, db), "the connection was kept")
	}
}
