module github.com/xapsd/xapsd

go 1.26.0

require (
	github.com/golang-jwt/jwt/v4 v4.4.1 // indirect
	github.com/sideshow/apns2 v0.25.0 // indirect
	github.com/sirupsen/logrus v1.10.2 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
