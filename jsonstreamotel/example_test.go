package jsonstreamotel_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	"github.com/DATA-DOG/go-sqlmock"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/jsonstreamotel"
)

// The metrics of one stream closed after its first row, read back from an
// in-memory reader. go-sqlmock stands in for PostgreSQL, so the close
// drains the rest instead of cutting a connection.
func ExampleNewObserver() {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = provider.Shutdown(context.Background()) }()
	observer, err := jsonstreamotel.NewObserver(jsonstreamotel.WithMeterProvider(provider))
	if err != nil {
		log.Fatal(err)
	}

	mockDB, mock, err := sqlmock.NewWithDSN("example_new_observer")
	if err != nil {
		log.Fatal(err)
	}
	defer mockDB.Close()
	drv, err := jsonstream.NewDriver(mockDB.Driver(), jsonstream.WithObserver(observer))
	if err != nil {
		log.Fatal(err)
	}
	connector, err := drv.OpenConnector("example_new_observer")
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	mock.ExpectQuery("SELECT data FROM documents").
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"id":1}`).AddRow(`{"id":2}`))

	rows, err := db.Query("SELECT data FROM documents")
	if err != nil {
		log.Fatal(err)
	}
	rows.Next()
	if err := rows.Close(); err != nil {
		log.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "db.client.jsonstream.streams" {
			for _, dp := range sum.DataPoints {
				outcome, _ := dp.Attributes.Value(jsonstreamotel.OutcomeKey)
				fmt.Printf("%s{outcome=%s} %d\n", m.Name, outcome.AsString(), dp.Value)
			}
		}
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "db.client.jsonstream.rows" {
			fmt.Printf("%s %d\n", m.Name, sum.DataPoints[0].Value)
		}
	}
	// Output:
	// db.client.jsonstream.streams{outcome=drained} 1
	// db.client.jsonstream.rows 1
}
