module github.com/xapsd/xapsd

go 1.26
