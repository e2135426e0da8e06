# pdbench quality: run as `gnuplot quality.gp` in this directory.
set terminal png size 900,500
set grid ytics
set yrange [0:1<*]
set style fill solid 0.6 border -1
set boxwidth 0.6
set output 'hit_rate.png'
set title 'KV hit rate by routing policy'
set ylabel 'cached / prompt tokens (%)'
plot 'quality.dat' using 1:3:xtic(2) with boxes notitle
set output 'ttft.png'
set title 'time to first token by routing policy (engine clock)'
set ylabel 'ms (log scale)'
set key top left
set logscale y
set yrange [*:*]
set style data histograms
set style histogram clustered gap 1
plot 'quality.dat' using 4:xtic(2) title 'mean', '' using 5 title 'p99'
