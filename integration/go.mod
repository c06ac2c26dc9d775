module github.com/jsonstream/jsonstream/integration

go 1.26.0

require (
	github.com/jmoiron/sqlx v1.4.0
	github.com/jsonstream/jsonstream v0.0.0-00010101000000-000000000000
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/lib/pq v1.12.3 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)

replace github.com/jsonstream/jsonstream => ../
