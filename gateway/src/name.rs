//! Istio SNI names (`outbound_.<port>_.<subset>_.<host>`) and host allow patterns.
