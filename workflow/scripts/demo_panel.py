from ragimpute.demo import DemoSpec, make_demo
from ragimpute.smk import run

run(
    snakemake,
    make_demo,
    spec=DemoSpec(**snakemake.params.spec),
    vcf_out=snakemake.output.vcf,
    array_out=snakemake.output.array,
)
