"""The tools people run: the ``awnode`` command line (``cli``), the local testnet launcher
(``testnet``) and the testnet's scripted workload (``workload``). They sit on top of every other
package and nothing imports them."""
