module rassylka/smsc-bench

// Standard library only. 1.19 so that Debian bookworm's golang-go builds it too.
go 1.19
